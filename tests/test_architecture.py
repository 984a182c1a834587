"""The architecture's rules hold: layers, no import cycle, modules you can hold in your head
(``python tests/importgraph.py`` prints the graph and each verdict)."""

from __future__ import annotations

import importgraph
import pytest

RULES = importgraph.violations(importgraph.build())


@pytest.mark.parametrize("rule", list(RULES))
def test_rule_is_kept(rule):
    assert RULES[rule] == [], f"{rule}: {RULES[rule]}"


def test_the_graph_sees_every_module_and_its_imports():
    graph = importgraph.build()
    assert "speechpipe.pipeline.hooks" in graph.modules and "speechpipe.stages.vad.segmenter" in graph.modules
    # Function-level imports count (they run too); TYPE_CHECKING ones do not.
    assert "speechpipe.stages.asr.window_decoder" in graph.imports["speechpipe.stages.asr.engine"]
    assert "speechpipe.telemetry.instruments" not in graph.imports["speechpipe.telemetry.stream_telemetry"]
    # A planted cycle is found.
    graph.imports["speechpipe.stages.pcm"] = {"speechpipe.stages.audio"}
    assert ["speechpipe.stages.audio", "speechpipe.stages.pcm"] in importgraph.cycles(graph)
