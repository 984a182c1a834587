"""Wiring telemetry to a pipeline: the one place that turns a :class:`Config` into telemetry and
its observers, used by every command (``transcribe``, ``eval``, ``serve``) and by the benchmarks
(the live server's telemetry is a part of it: :mod:`speechpipe.pipeline.telemetry_part`).

The telemetry package knows nothing of the pipeline's config: it is given the ``[telemetry]``
table and explicit :class:`~speechpipe.telemetry.instruments.Labels` (variant, VAD config id,
model) from here.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from speechpipe.pipeline.config import Config, ConfigError
from speechpipe.telemetry import names as n
from speechpipe.telemetry.instruments import Instrumentation, Labels
from speechpipe.telemetry.setup import Telemetry, TelemetryError


def labels_for(config: Config, role: str = "primary") -> Labels:
    """What a pipeline run with ``config`` is (in ``role`` of a deployment), for its spans and
    metric points."""
    return Labels(
        variant=config.pipeline.variant,
        vad_config_id=config.vad.config_id,
        asr_model=config.asr.model,
        variant_id=config.variant_id,
        role=role,
        automation=config.automation.level,
    )


def start_telemetry(
    config: Config,
    mode: str = n.OFFLINE,
    *,
    environ: Mapping[str, str] | None = None,
    metrics_page: bool = False,
    announce: bool = True,
) -> Telemetry:
    """Telemetry for a command, from the config's ``[telemetry]`` table and the environment.

    With ``announce`` it says on stderr where traces and metrics go (nothing when nothing is
    exported). Bad settings raise :class:`ConfigError`, like any other bad config.
    """
    try:
        telemetry = Telemetry(
            config.telemetry, labels_for(config), mode=mode, environ=environ, metrics_page=metrics_page
        )
    except TelemetryError as exc:
        raise ConfigError(str(exc)) from None
    if announce:
        for line in telemetry.plan.describe():
            print(f"speechpipe: telemetry: {line}", file=sys.stderr)
    return telemetry


def instrumentation_for(config: Config, tracer_provider, meter_provider, **kwargs) -> Instrumentation:
    """Instrumentation on given providers (tests, embedding), labelled and set up from ``config``."""
    kwargs.setdefault("trace_text", config.telemetry.trace_text)
    kwargs.setdefault("trace_layout", config.telemetry.trace_layout)
    return Instrumentation(tracer_provider, meter_provider, labels=labels_for(config), **kwargs)
