"""The ``speechpipe`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from speechpipe.pipeline.config import ConfigError, load_config, parse_override
from speechpipe.pipeline.offline import ModelError


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
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="set any config key, e.g. --set vad.hangover_ms=300 (repeatable)",
    )
    add_telemetry_arguments(parser)


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


def config_from_args(args: argparse.Namespace):
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechpipe",
        description="Streaming speech recognition: webrtcvad segmentation, faster-whisper transcription.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "transcribe",
        help="transcribe files and folders",
        description="Transcribe audio files and folders (recursively).",
    )
    t.add_argument("paths", nargs="+", help="audio files or folders")
    t.add_argument("-o", "--output", default="transcripts", help="output folder (default: ./transcripts)")
    t.add_argument("--force", action="store_true", help="redo files whose results already exist")
    t.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a progress bar")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    t.add_argument("-q", "--quiet", action="store_true", help="do not print transcripts")
    add_config_arguments(t)
    t.set_defaults(func=cmd_transcribe)

    from speechpipe.pipeline import evaluate

    e = sub.add_parser(
        "eval",
        help="compare pipeline variants on labelled datasets",
        description="Run pipeline variants over datasets with references and VAD labels; write eval.json and report.html.",
    )
    evaluate.add_arguments(e)
    e.set_defaults(func=evaluate.run_cli)
    from speechpipe.pipeline import live_cli

    live_cli.register(sub, add_config_arguments)  # serve, stream, mic
    return parser


def start_telemetry(config, mode: str):
    """Telemetry for a command, from the config's [telemetry] table and the environment; says on
    stderr where traces and metrics go (nothing when nothing is exported)."""
    from speechpipe.telemetry.setup import Telemetry, TelemetryError

    try:
        telemetry = Telemetry.start(config, mode=mode)
    except TelemetryError as exc:
        raise ConfigError(str(exc)) from None
    for line in telemetry.plan.describe():
        print(f"speechpipe: telemetry: {line}", file=sys.stderr)
    return telemetry


def cmd_transcribe(args: argparse.Namespace) -> int:
    from speechpipe.pipeline import offline
    from speechpipe.telemetry.instrument import classify_input_error

    config = config_from_args(args)
    telemetry = start_telemetry(config, mode="offline")

    def on_result(result) -> None:
        if args.quiet:
            return
        wer = f"  WER {result.wer.wer * 100:5.1f}%" if result.wer is not None and result.wer.wer is not None else ""
        print(f"{result.file}  ({result.duration:.1f} s){wer}\n    {result.text or '(no speech)'}", flush=True)

    def on_failure(failure) -> None:
        telemetry.instrumentation.input_error(classify_input_error(failure.error))
        print(f"speechpipe: error: {failure.file}: {failure.error}", file=sys.stderr, flush=True)

    try:
        summary = offline.run(
            args.paths,
            args.output,
            config,
            force=args.force,
            progress=args.progress,
            on_result=on_result,
            on_failure=on_failure,
            hooks_factory=lambda item: telemetry.stream_hooks(file=str(item.path)),
            metrics=telemetry.metrics_snapshot,
        )
    finally:
        telemetry.shutdown()
        for line in telemetry.problems():
            print(f"speechpipe: {line}", file=sys.stderr)
    wer = f", WER {summary.wer.wer * 100:.2f}% over {summary.wer.ref_words} words" if summary.wer else ""
    print(
        f"{summary.files} file(s): {summary.transcribed} transcribed, {summary.skipped} already done, "
        f"{len(summary.failed)} failed; {summary.audio_s:.1f} s of audio in {summary.wall_s:.1f} s{wer}. "
        f"Results in {Path(args.output)}/",
        file=sys.stderr,
    )
    return 1 if summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"speechpipe: config error: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"speechpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
