"""The ``speechpipe`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speechpipe.pipeline.cli import live as live_cli
from speechpipe.pipeline.cli.args import add_config_arguments, add_ray_arguments, config_from_args, ray_settings
from speechpipe.pipeline.config import ConfigError
from speechpipe.pipeline.deploy import cli as deploy_cli
from speechpipe.pipeline.evaluate import cli as eval_cli
from speechpipe.pipeline.monitoring import cli as monitoring_cli
from speechpipe.pipeline.offline.allocator import tune_allocator
from speechpipe.pipeline.review import cli as review_cli
from speechpipe.stages.asr import ModelLoadError


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
    t.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="files transcribed at a time in this process, each on a model replica (default 0: from the cores)",
    )
    add_ray_arguments(t)
    add_config_arguments(t)
    t.set_defaults(func=cmd_transcribe)

    e = sub.add_parser(
        "eval",
        help="compare pipeline variants on labelled datasets",
        description="Run pipeline variants over datasets with references and VAD labels; write eval.json and report.html.",
    )
    eval_cli.add_arguments(e)
    e.set_defaults(func=eval_cli.run_cli)
    live_cli.register(sub)  # serve, stream, mic
    deploy_cli.register(sub)  # deploy status|switch|promote|rollback|weight|pause|resume
    monitoring_cli.register(sub)  # baseline build
    review_cli.register(sub)  # review threshold
    return parser


def cmd_transcribe(args: argparse.Namespace) -> int:
    from speechpipe.pipeline.observability import start_telemetry
    from speechpipe.pipeline.offline import runner as offline
    from speechpipe.telemetry.instruments import classify_input_error

    config = config_from_args(args)
    telemetry = start_telemetry(config)

    def on_result(result) -> None:
        if args.quiet:
            return
        wer = f"  WER {result.wer.wer * 100:5.1f}%" if result.wer is not None and result.wer.wer is not None else ""
        print(f"{result.file}  ({result.duration:.1f} s){wer}\n    {result.text or '(no speech)'}", flush=True)

    def on_failure(failure) -> None:
        telemetry.instrumentation.input_error(classify_input_error(failure.error))
        print(f"speechpipe: error: {failure.file}: {failure.error}", file=sys.stderr, flush=True)

    observers = lambda item: [telemetry.stream_observer(file=str(item.path))]
    if args.ray is not None:
        from speechpipe.pipeline.offline.ray_runner import ray_transcriber

        transcriber = ray_transcriber(config, ray_settings(args))  # the actors' spans stay on the actors
    else:
        sized, jobs = offline.parallel_config(config, args.jobs)
        transcriber = offline.local_transcriber(sized, None, observers, jobs)
    try:
        summary = offline.run(
            args.paths,
            args.output,
            config,
            force=args.force,
            progress=args.progress,
            on_result=on_result,
            on_failure=on_failure,
            observers_factory=observers,
            metrics=telemetry.metrics_snapshot,
            transcriber=transcriber,
        )
    except offline.OutputError as exc:  # the output folder or summary.json: one line, no traceback
        if exc.summary is not None:
            print(_totals(exc.summary, args.output), file=sys.stderr)
        print(f"speechpipe: error: {exc}", file=sys.stderr)
        return 1
    finally:
        telemetry.shutdown()
        for line in telemetry.problems():
            print(f"speechpipe: {line}", file=sys.stderr)
    print(_totals(summary, args.output), file=sys.stderr)
    return 1 if summary.failed else 0


def _totals(summary, output: str) -> str:
    """The run's last line: what was done, and where the results are."""
    wer = f", WER {summary.wer.wer * 100:.2f}% over {summary.wer.ref_words} words" if summary.wer else ""
    return (
        f"{summary.files} file(s): {summary.transcribed} transcribed, {summary.skipped} already done, "
        f"{len(summary.failed)} failed; {summary.audio_s:.1f} s of audio in {summary.wall_s:.1f} s{wer}. "
        f"Results in {Path(output)}/"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line (``argv``: the process's own arguments when None)."""
    if argv is None:  # a process of its own: tune the allocator before any model is loaded
        tune_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"speechpipe: config error: {exc}", file=sys.stderr)
        return 2
    except ModelLoadError as exc:
        print(f"speechpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("speechpipe: interrupted", file=sys.stderr)
        return 130
