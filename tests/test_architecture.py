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
    # Function-level imports count (they run too), and so do TYPE_CHECKING ones.
    assert "speechpipe.stages.asr.window_decoder" in graph.imports["speechpipe.stages.asr.engine"]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from speechpipe.stages.audio import header\n"
    assert importgraph._imports(importgraph.ast.parse(source), "speechpipe.stages.pcm", False) == [
        ("typing", ["TYPE_CHECKING"]),
        ("speechpipe.stages.audio", ["header"]),
    ]
    # A planted cycle is found.
    graph.imports["speechpipe.stages.pcm"] = {"speechpipe.stages.audio"}
    assert ["speechpipe.stages.audio", "speechpipe.stages.pcm"] in importgraph.cycles(graph)


def test_the_wheel_installs_every_package_and_web_file(tmp_path):
    """A plain ``pip install .`` (the Dockerfile's) must hold what an editable install finds by path:
    a subpackage missing from pyproject's list imports fine in development and fails in production."""
    import shutil
    import subprocess
    import sys
    import zipfile

    # From a copy: a build/ folder left in the checkout would lend the wheel files the list lacks.
    src = tmp_path / "src"
    for package in importgraph.PACKAGES:
        shutil.copytree(importgraph.ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(importgraph.ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)], check=True)
    (wheel,) = tmp_path.glob("speechpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = [p for pkg in importgraph.PACKAGES for p in (importgraph.ROOT / pkg).rglob("*.py")]
    web = [p for p in (importgraph.ROOT / "pipeline" / "web").rglob("*") if p.is_file()]  # vendor/ too
    assert sources and web
    missing = [
        str(p.relative_to(importgraph.ROOT))
        for p in sources + web
        if "speechpipe/" + str(p.relative_to(importgraph.ROOT)) not in names
    ]
    assert missing == []
