"""The ``speechpipe eval`` command."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from speechpipe.pipeline.cli.args import (
    add_ray_arguments,
    add_set_argument,
    add_telemetry_arguments,
    ray_settings,
    telemetry_overrides,
)
from speechpipe.pipeline.config import ConfigError, load_config, parse_override
from speechpipe.pipeline.evaluate.quality.word_timing import BOUNDARY_TOLERANCE_S


def add_arguments(p) -> None:
    """Arguments of ``speechpipe eval``."""
    p.add_argument(
        "datasets",
        nargs="+",
        help="dataset folders (audio + .txt references + optional <id>.segments.txt labels) or files",
    )
    p.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="NAME[=CONFIG.toml]",
        help="a pipeline variant: NAME=CONFIG.toml (applied on top of the base settings) or NAME (the config's [variants.NAME], else the base settings); repeatable; without --variant and --sweep, every variant of --config",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="TABLE.KEY=V1,V2,...",
        help="sweep a config key over values; several --sweep give their cartesian product",
    )
    p.add_argument(
        "-o", "--output", default="eval", help="output folder for eval.json and report.html (default: ./eval)"
    )
    p.add_argument("--baseline", help="variant the others are compared with (default: the first)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=BOUNDARY_TOLERANCE_S,
        help=f"seconds from a segment edge within which an error counts as 'boundary' (default: {BOUNDARY_TOLERANCE_S})",
    )
    p.add_argument("--timelines", type=int, default=6, help="per-file timelines drawn in the report (default: 6)")
    p.add_argument("--no-report", action="store_true", help="write eval.json only")
    p.add_argument("--cache-dir", help="where reference timings are cached (default: OUTPUT/cache/ref_timing)")
    p.add_argument(
        "--calibration",
        metavar="PROFILE.json",
        help="a baseline profile, the file `speechpipe baseline build` writes: also estimate each variant's WER "
        "without references, as the live drift monitor does, with that profile's calibration (the variant of the "
        "same name, else its only or its 'default' variant), beside the true WER",
    )
    g = p.add_argument_group("base settings (every variant starts from these)")
    g.add_argument("--config", metavar="TOML", help="base config file")
    add_set_argument(g, "set a base config key (repeatable)")
    g.add_argument("--model", help="faster-whisper model name or directory")
    g.add_argument("--threads", type=int, help="CPU threads for the model")
    add_ray_arguments(p, "the reference timings and the variants' files")
    add_telemetry_arguments(p)


def run_cli(args) -> int:
    """Entry point of ``speechpipe eval`` (returns the exit code)."""
    # imported here: every other command of the CLI starts without the eval runner and telemetry
    from speechpipe.pipeline.evaluate.runner import EvalError, EvalOptions, evaluate, load_calibrations
    from speechpipe.pipeline.observability import start_telemetry
    from speechpipe.pipeline.variants import selected

    overrides: dict[str, Any] = dict(parse_override(t) for t in args.overrides)
    if args.model:
        overrides["asr.model"] = args.model
    if args.threads is not None:
        overrides["asr.threads"] = args.threads
    overrides.update({k: v for k, v in telemetry_overrides(args).items() if v is not None})
    base = load_config(args.config, overrides)
    telemetry = None
    try:
        variants = selected(base, args.variants, args.sweep)
        if args.calibration:  # a bad profile stops the run before anything starts
            load_calibrations(args.calibration, [v.name for v in variants])
        opts = EvalOptions(
            tolerance=args.tolerance,
            baseline=args.baseline,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            report=not args.no_report,
            timelines=args.timelines,
            calibration=args.calibration,
        )
        telemetry = start_telemetry(base)
        settings = ray_settings(args)
        pool_context = contextlib.nullcontext()
        if settings is not None:
            from speechpipe.pipeline.offline.ray_runner import RayPool

            pool_context = RayPool(settings)
        with pool_context as pool:
            result = evaluate(
                args.datasets,
                variants,
                args.output,
                options=opts,
                instrumentation=telemetry.instrumentation,
                log=lambda m: print(m, file=sys.stderr, flush=True),
                pool=pool,
            )
    except (EvalError, ConfigError) as exc:
        print(f"speechpipe: eval: {exc}", file=sys.stderr)
        return 2
    finally:
        if telemetry is not None:
            telemetry.shutdown()
            for line in telemetry.problems():
                print(f"speechpipe: {line}", file=sys.stderr)
    print(f"eval run {result.doc['run_id']}", file=sys.stderr)
    print_summary(result.doc)
    print(f"\nwrote {result.json_path}" + (f" and {result.report_path}" if opts.report else ""), file=sys.stderr)
    for f in result.failed:
        print(
            f"speechpipe: error: {f.get('variant', '') + ': ' if f.get('variant') else ''}{f['file']}: {f['error']}",
            file=sys.stderr,
        )
    return 1 if result.failed else 0


def print_summary(doc: dict) -> None:
    """The variant table on stdout (with ``--calibration``, the estimated WER and its 90 % interval
    beside the WER)."""
    from speechpipe.pipeline.evaluate.runner import estimated_text, pct

    w = max([len(n) for n in doc["variants"]] + [21])
    with_est = any("estimated" in v for v in doc["variants"].values())

    def est(v: dict | None) -> str:
        """The "est. WER [90 %]" cell (nothing without any estimate)."""
        if not with_est:
            return ""
        return f" {estimated_text(v['estimated']) if v and 'estimated' in v else '':>19s}"

    est_head = f" {'est. WER [90 %]':>19s}" if with_est else ""
    print(
        f"{'variant':{w}s} {'WER':>7s}{est_head} {'S':>4s} {'D':>4s} {'I':>4s} {'vad_drop':>8s} {'boundary':>8s} "
        f"{'asr':>5s} {'VAD F1':>6s} {'segs':>5s} {'ASR audio s':>11s} {'ASR s/s':>7s}"
    )
    for name, v in doc["variants"].items():
        e = v["errors"]
        f1 = "-" if v["vad"]["f1"] is None else f"{v['vad']['f1']:.3f}"
        print(
            f"{name:{w}s} {pct(v['wer']):>7s}{est(v)} {v['substitutions']:4d} {v['deletions']:4d} {v['insertions']:4d} "
            f"{e['vad_dropped']:8d} {e['boundary']:8d} {e['asr']:5d} {f1:>6s} {v['vad']['segments']:5d} "
            f"{v['asr_audio_s']:11.1f} {v['asr_s_per_audio_s']:7.3f}"
        )
    if doc.get("unsegmented"):
        u = doc["unsegmented"]
        print(
            f"{'(whole files, no VAD)':{w}s} {pct(u['wer']):>7s}{est(None)} {u['substitutions']:4d} "
            f"{u['deletions']:4d} {u['insertions']:4d}"
        )
    for c in doc["comparisons"]:
        if c["new_errors"] is None or not any(c["new_errors"].values()) and not any(c["fixed_errors"].values()):
            continue
        ne, fe = c["new_errors"], c["fixed_errors"]
        print(
            f"{c['variant']} vs {c['baseline']}: WER {'+' if (c['wer_delta'] or 0) >= 0 else ''}{pct(c['wer_delta'])}; "
            f"new errors {sum(ne.values())} (vad_dropped {ne['vad_dropped']}, boundary {ne['boundary']}, asr {ne['asr']}), "
            f"gone {sum(fe.values())} (vad_dropped {fe['vad_dropped']}, boundary {fe['boundary']}, asr {fe['asr']})"
        )
