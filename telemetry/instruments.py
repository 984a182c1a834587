"""The instruments of one process, the labels they carry, and a factory of per-stream observers.

:class:`Instrumentation` is created once per process (or per test) from a tracer provider and a
meter provider that are handed in, never taken from the OpenTelemetry globals. It creates every
metric instrument of :mod:`speechpipe.telemetry.names` once, and hands out one
:class:`~speechpipe.telemetry.stream_telemetry.StreamTelemetry` per stream: the observer given to
that stream's session. It is itself an observer of process-level events (streams a server turned
away).

What every span and metric point is labelled with (variant, VAD config id, model) is given
explicitly as :class:`Labels`; :meth:`Instrumentation.labelled` gives a view with other labels
that shares the providers and instruments (one process may run several variants).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context

from speechpipe.pipeline.hooks import FAULTS, Event, ObserverFaults, StreamRejected
from speechpipe.telemetry import metric_specs as specs
from speechpipe.telemetry import names as n
from speechpipe.telemetry.observer_metrics import register_observer_metrics
from speechpipe.telemetry.process_metrics import register_process_metrics
from speechpipe.telemetry.stream_telemetry import StreamTelemetry


def version() -> str:
    """speechpipe's version, as installed (``"0"`` from a source tree that is not installed)."""
    try:
        from importlib.metadata import version as installed

        return installed("speechpipe")
    except Exception:  # noqa: BLE001
        return "0"


def classify_input_error(message: str) -> str:
    """A short ``input.reason`` for a file the offline runner could not use."""
    m = message.lower()
    for key, reason in (
        ("no such file", "missing"),
        ("file not found", "missing"),
        ("empty", "empty"),
        ("truncated", "truncated"),
        ("not decodable", "undecodable"),
        ("decoding failed", "undecodable"),
        ("sample rate", "unsupported_rate"),
        ("cannot read", "unreadable"),
    ):
        if key in m:
            return reason
    return "other"


@dataclass(frozen=True)
class Labels:
    """What the pipeline being observed is: carried on every span and metric point.

    Attributes:
        variant: ``pipeline.variant``.
        vad_config_id: default ``vad.config_id`` (each stream reports its own session's id; this
            one labels process-level metrics such as CPU and rejected streams).
        asr_model: ``asr.model`` on stream spans.
        variant_id: ``pipeline.variant_id``, the hash of the variant's effective settings.
        role: ``deploy.role``: ``primary``, ``candidate`` or ``shadow``.
        automation: ``automation.level`` on every span of a stream.
    """

    variant: str = "default"
    vad_config_id: str = ""
    asr_model: str = ""
    variant_id: str = ""
    role: str = "primary"
    automation: str = "full"


class _Instruments:
    """The tracer, the meter and one instrument per metric name, shared by every labelled view."""

    def __init__(self, tracer_provider: trace.TracerProvider, meter_provider) -> None:
        v = version()
        self.tracer = tracer_provider.get_tracer(n.SCOPE, v)
        self.meter = meter_provider.get_meter(n.SCOPE, v)
        self.by_name: dict[str, Any] = {}
        for spec in specs.METRICS:
            if spec.kind == specs.COUNTER:
                self.by_name[spec.name] = self.meter.create_counter(spec.name, spec.unit, spec.description)
            elif spec.kind == specs.UP_DOWN_COUNTER:
                self.by_name[spec.name] = self.meter.create_up_down_counter(spec.name, spec.unit, spec.description)
            elif spec.kind == specs.HISTOGRAM:
                self.by_name[spec.name] = self.meter.create_histogram(
                    spec.name, spec.unit, spec.description, explicit_bucket_boundaries_advisory=spec.buckets
                )


class Instrumentation:
    """The instruments of one process, and a factory of per-stream observers.

    Args:
        tracer_provider: where spans go (an SDK ``TracerProvider``, or a no-op one).
        meter_provider: where metrics go.
        labels: what every span and metric point is labelled with.
        mode: ``"offline"`` or ``"live"``: default for :meth:`stream_observer`, label of process metrics.
        trace_text: put transcript text on spans (personal data: off unless the user opts in).
        trace_layout: ``"stream"``, ``"utterance"`` or ``"auto"`` (stream offline, utterance live).
        process_metrics: observe this process's CPU and memory (psutil).
        observer_faults: the tally of observers' errors and drops to report (default: the
            process's, :data:`speechpipe.pipeline.hooks.FAULTS`, which every fan-out counts into).
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider,
        meter_provider,
        *,
        labels: Labels | None = None,
        mode: str = n.OFFLINE,
        trace_text: bool = False,
        trace_layout: str = "auto",
        process_metrics: bool = True,
        observer_faults: ObserverFaults | None = None,
        _instruments: _Instruments | None = None,
    ) -> None:
        self._shared = _instruments or _Instruments(tracer_provider, meter_provider)
        self._providers = (tracer_provider, meter_provider)
        self.tracer = self._shared.tracer
        self.meter = self._shared.meter
        self.instruments = self._shared.by_name
        self.labels = labels or Labels()
        self.mode = mode
        self.trace_text = trace_text
        self.trace_layout = trace_layout
        if _instruments is None:
            faults = observer_faults if observer_faults is not None else FAULTS
            register_observer_metrics(self._shared.meter, faults, self.base_attributes)
        if process_metrics and _instruments is None:
            register_process_metrics(self._shared.meter, self.base_attributes)

    def labelled(self, labels: Labels) -> Instrumentation:
        """The same instruments and providers, labelled ``labels`` (e.g. one variant of an eval run)."""
        return Instrumentation(
            *self._providers,
            labels=labels,
            mode=self.mode,
            trace_text=self.trace_text,
            trace_layout=self.trace_layout,
            _instruments=self._shared,
        )

    # -- per stream ---------------------------------------------------------------------------

    def stream_observer(
        self,
        *,
        mode: str | None = None,
        file: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        parent: Context | None = None,
        trace_layout: str | None = None,
    ) -> StreamTelemetry:
        """The observer of one new stream: pass it to ``StreamSession(..., observers=[...])``.

        Args:
            mode: ``"offline"`` or ``"live"`` (default: this instrumentation's mode).
            file: the input file (offline), set as the ``file`` attribute of the stream span.
            attributes: extra attributes for the stream span (e.g. the client's audio format).
            parent: context whose span becomes the parent of the ``stream`` span (e.g. an eval
                run's span); by default the stream span is the root of a new trace.
            trace_layout: overrides the instrumentation's layout for this stream.
        """
        mode = mode or self.mode
        layout = trace_layout or self.trace_layout
        if layout == "auto":
            layout = "utterance" if mode == n.LIVE else "stream"
        return StreamTelemetry(self, mode=mode, layout=layout, file=file, attributes=attributes, parent=parent)

    # -- process-level events -------------------------------------------------------------------

    def base_attributes(self, vad_config_id: str | None = None, mode: str | None = None) -> dict[str, str]:
        """The attributes every metric point carries."""
        return {
            n.PIPELINE_VARIANT: self.labels.variant,
            n.VARIANT_ID: self.labels.variant_id,
            n.DEPLOY_ROLE: self.labels.role,
            n.VAD_CONFIG_ID: vad_config_id if vad_config_id is not None else self.labels.vad_config_id,
            n.PIPELINE_MODE: mode or self.mode,
        }

    def on_event(self, event: Event) -> None:
        """Process-level events (a server's): streams turned away are counted."""
        if isinstance(event, StreamRejected):
            self.stream_rejected(event.reason)

    def stream_rejected(self, reason: str, *, vad_config_id: str | None = None) -> None:
        """Count a stream refused before any session existed (``reason``: e.g. ``"busy"``)."""
        attrs = self.base_attributes(vad_config_id)
        attrs[n.STREAM_REJECT_REASON] = reason
        self.instruments[n.STREAMS_REJECTED].add(1, attrs)

    def input_error(self, reason: str, *, vad_config_id: str | None = None) -> None:
        """Count an input that could not be used at all (see :func:`classify_input_error`)."""
        attrs = self.base_attributes(vad_config_id)
        attrs[n.INPUT_REASON] = reason
        self.instruments[n.INPUT_ERRORS].add(1, attrs)
