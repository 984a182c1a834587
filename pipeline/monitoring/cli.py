"""``speechpipe baseline build PATH... -o baseline.json``: the baseline profile of what the
pipeline sees and says on a set of recordings, for drift monitoring (per variant: each configured
variant of the config runs over every file)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from speechpipe.pipeline.cli.args import add_config_arguments, config_from_args


def register(sub: Any) -> None:
    b = sub.add_parser(
        "baseline",
        help="build a baseline profile for drift monitoring",
        description="Run the pipeline (every variant of the config) over files and folders and write the "
        "distribution of every per-segment feature, with drift thresholds learned from it.",
    )
    actions = b.add_subparsers(dest="baseline_action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="write a baseline profile")
    build.add_argument("paths", nargs="+", help="audio files or folders (recursively)")
    build.add_argument("-o", "--output", required=True, help="the profile to write (JSON)")
    build.add_argument("--window-segments", type=int, default=100, help="segments in a drift window (default 100)")
    build.add_argument("--min-segments", type=int, default=30, help="least segments judged (default 30)")
    add_config_arguments(build)
    build.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    from speechpipe.pipeline.monitoring.baseline import build_profile, save_profile
    from speechpipe.pipeline.monitoring.collector import FeatureCollector
    from speechpipe.pipeline.monitoring.quality import Sample
    from speechpipe.pipeline.offline.runner import find_inputs, load_engine, read_reference, transcribe_file
    from speechpipe.stages.audio import AudioError

    config = config_from_args(args)
    inputs, missing = find_inputs(args.paths)
    for failure in missing:
        print(f"speechpipe baseline: {failure.file}: {failure.error}", file=sys.stderr)
    if not inputs:
        print("speechpipe baseline: no audio files found", file=sys.stderr)
        return 1
    segments: dict[str, list[dict]] = {}
    groups: dict[str, list[str]] = {}
    scored: dict[str, list[list[int]]] = {}  # per variant, [errors, words] of each file with a reference
    samples: dict[str, list[Sample]] = {}  # per variant, those files' segments and truth (the WER estimate)
    for name in config.variant_names():
        variant = config.for_variant(name)
        engine = load_engine(variant)
        for item in inputs:
            found: list[dict] = []
            collector = FeatureCollector(lambda _sid, _i, features, found=found: found.append(features))
            try:
                # One segment per Whisper call, as live: packing changes the confidences.
                result = transcribe_file(
                    item.path, variant, engine, observers=[collector], reference=read_reference(item), packed=False
                )
            except AudioError as exc:  # a corrupt file is reported; the rest runs
                print(f"speechpipe baseline: {item.path}: {exc}", file=sys.stderr)
                continue
            if result.wer is not None and result.wer.ref_words:
                scored.setdefault(name, []).append([result.wer.errors, result.wer.ref_words])
                samples.setdefault(name, []).append(Sample.of(found, result.wer.errors, result.wer.ref_words))
            segments.setdefault(name, []).extend(found)
            groups.setdefault(name, []).extend(str(item.path) for _ in found)
        wer = scored.get(name)
        figures = f", WER {sum(e for e, _ in wer) / sum(w for _, w in wer):.2%} on {len(wer)} references" if wer else ""
        print(f"speechpipe baseline: {name}: {len(segments.get(name, []))} segments{figures}", file=sys.stderr)
    if not any(segments.values()):
        print("speechpipe baseline: no speech segment in the inputs", file=sys.stderr)
        return 1
    for name, segs in segments.items():
        if len(segs) < 2 * args.window_segments or len(set(groups[name])) < 3:
            print(
                f"speechpipe baseline: warning: {name}: {len(segs)} segments from {len(set(groups[name]))} files "
                f"cannot give windows of {args.window_segments} made of whole files and others to compare "
                "them with; those thresholds come from segments drawn one by one and will be too tight "
                "(other recordings will alarm). Build from more files, or watch smaller windows.",
                file=sys.stderr,
            )
    profile = build_profile(
        segments, args.window_segments, args.min_segments, groups=groups, wer=scored, quality=samples
    )
    for name, spec in profile["variants"].items():
        if "quality" not in spec:
            print(
                f"speechpipe baseline: {name}: no estimated WER (it needs 3 files with a reference: "
                "a .txt beside each audio file)",
                file=sys.stderr,
            )
    save_profile(profile, args.output)
    print(f"speechpipe baseline: wrote {args.output}", file=sys.stderr)
    return 0
