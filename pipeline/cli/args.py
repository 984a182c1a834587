"""Command-line flags shared by the commands that run the pipeline, and the config they make."""

from __future__ import annotations

import argparse
from typing import Any

from speechpipe.pipeline.config import Config, load_config, parse_override


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that runs the pipeline; each overrides the config file."""
    g = parser.add_argument_group("pipeline settings (override --config)")
    g.add_argument(
        "--config", metavar="TOML", help="config file with [pipeline], [vad], [asr], [output], [telemetry] tables"
    )
    g.add_argument("--model", help="faster-whisper model name or local model directory (default: bundled tiny.en)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="inference device (default: auto)")
    g.add_argument("--compute-type", help="CTranslate2 compute type (default: auto = int8 on CPU, float16 on GPU)")
    g.add_argument("--beam-size", type=int, help="decoder beam width (default: 1)")
    g.add_argument("--language", help="language code (default: en)")
    g.add_argument("--threads", type=int, help="CPU threads for the model (default: 0 = automatic)")
    g.add_argument("--vad-aggressiveness", type=int, choices=[0, 1, 2, 3], help="webrtcvad mode")
    g.add_argument("--vad-backend", choices=["webrtc", "silero"], help="VAD backend")
    g.add_argument("--variant", help="variant name carried on telemetry (default: default)")
    add_set_argument(g, "set any config key, e.g. --set vad.hangover_ms=300 (repeatable)")
    add_telemetry_arguments(parser)


def add_set_argument(group, help: str) -> None:
    """``--set TABLE.KEY=VALUE`` (repeatable), gathered in ``args.overrides``."""
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE", help=help)


def add_telemetry_arguments(parser: argparse.ArgumentParser) -> None:
    """OpenTelemetry flags; each overrides the config file's [telemetry] table and the OTEL_* variables."""
    g = parser.add_argument_group(
        "telemetry (override [telemetry] and OTEL_* variables; nothing is exported unless asked)"
    )
    g.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="send traces and metrics to this OTLP collector, "
        "e.g. http://localhost:4317 (gRPC) or http://localhost:4318 (HTTP)",
    )
    g.add_argument(
        "--otlp-protocol",
        choices=["grpc", "http", "http/protobuf"],
        help="OTLP transport (default: gRPC on port 4317, else HTTP)",
    )
    g.add_argument("--trace-file", metavar="FILE.jsonl", help="write spans as OTLP JSON lines (Jaeger UI opens it)")
    g.add_argument("--console-telemetry", action="store_true", default=None, help="print spans and metrics to stderr")
    g.add_argument(
        "--trace-text",
        action="store_true",
        default=None,
        help="put transcript text on spans (off by default: it is personal data)",
    )
    g.add_argument("--service-name", help="service.name of spans and metrics (default: speechpipe)")
    g.add_argument(
        "--prometheus-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus /metrics on this port while running (0: any free port)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the :class:`~speechpipe.pipeline.config.Config` from ``--config`` and the flags."""
    overrides: dict[str, Any] = {}
    for text in args.overrides:
        key, value = parse_override(text)
        overrides[key] = value
    flags = {
        "asr.model": args.model,
        "asr.device": args.device,
        "asr.compute_type": args.compute_type,
        "asr.beam_size": args.beam_size,
        "asr.language": args.language,
        "asr.threads": args.threads,
        "vad.aggressiveness": args.vad_aggressiveness,
        "vad.backend": args.vad_backend,
        "pipeline.variant": args.variant,
        **telemetry_overrides(args),
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(args.config, overrides)


def telemetry_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[telemetry]`` keys set by the flags of :func:`add_telemetry_arguments` (None: not set)."""
    return {
        "telemetry.otlp_endpoint": getattr(args, "otlp_endpoint", None),
        "telemetry.otlp_protocol": getattr(args, "otlp_protocol", None),
        "telemetry.trace_file": getattr(args, "trace_file", None),
        "telemetry.console": getattr(args, "console_telemetry", None),
        "telemetry.trace_text": getattr(args, "trace_text", None),
        "telemetry.service_name": getattr(args, "service_name", None),
        "telemetry.prometheus_port": getattr(args, "prometheus_port", None),
    }


def add_ray_arguments(p, what: str = "the files") -> None:
    """``--ray [ADDRESS]`` and the actor sizes, for commands that can run on Ray."""
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help=f"run {what} on Ray actors (pip install 'speechpipe[ray]'): no ADDRESS starts a local instance, "
        "'auto' joins this machine's cluster, ray://HOST:10001 a remote one (inputs on a shared file system)",
    )
    p.add_argument("--ray-actors", type=int, default=0, help="actors, each with a model (default: CPUs / per actor)")
    p.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="CPUs per actor (default: 1)")
    p.add_argument("--ray-gpus-per-actor", type=float, default=0.0, help="GPUs per actor (default: 0)")


def ray_settings(args):
    """The :class:`~speechpipe.pipeline.offline.ray_runner.RaySettings` of ``--ray`` and its sizes (None
    without ``--ray``)."""
    if args.ray is None:
        return None
    from speechpipe.pipeline.offline.ray_runner import RaySettings

    return RaySettings(args.ray or None, args.ray_actors, args.ray_cpus_per_actor, args.ray_gpus_per_actor)
