"""``speechpipe review threshold``: the confidence threshold of ``partial`` that catches a target
share of the AI's word errors, from the segments people reviewed, and the load it implies.
``speechpipe review export``: the reviewed segments as a training set (:mod:`.export`,
:mod:`.export_files`; docs/review.md, "Export for training")."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    r = sub.add_parser("review", help="the human review queue", description="Tools of the human review queue.")
    actions = r.add_subparsers(dest="review_action", required=True, metavar="ACTION")
    t = actions.add_parser(
        "threshold",
        help="pick [automation] review_below from reviewed segments",
        description="From reviewed segments (their AI confidence and the AI's word errors against the "
        "reviewer), the share sent to review against the share of errors caught, per variant; prints the "
        "threshold that catches --target-errors of them and the review load it implies.",
    )
    t.add_argument("--db", required=True, help="the review store (a SQLite file or postgresql://...)")
    t.add_argument("--target-errors", type=float, default=0.8, help="share of word errors to catch (default 0.8)")
    t.add_argument("--variant", help="only this variant (default: each)")
    t.add_argument("--json", action="store_true", help="print the curves as JSON")
    t.set_defaults(func=cmd_threshold)
    x = actions.add_parser(
        "export",
        help="write the reviewed segments as a training set",
        description="The reviewed segments (their audio and the reviewer's text) as a dataset to train on: "
        "DIR/train, DIR/dev and DIR/test, each with 16 kHz WAV files, a .txt reference beside each and a "
        "metadata.jsonl (Hugging Face audiofolder, NeMo); DIR/export.json says what went where and what was "
        "left out. Splits by session; a re-run reuses what is there.",
    )
    x.add_argument("--db", required=True, help="the review store (a SQLite file or postgresql://...)")
    x.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="the export's folder (new, empty, or an export)"
    )
    x.add_argument("--data-dir", help="the segments' audio (default: review-audio beside a SQLite file, as serve's)")
    x.add_argument("--config", metavar="TOML", help="the server's config: names each variant's model in the manifest")
    x.add_argument("--since", help="only segments reviewed at or after this (Unix seconds or an ISO date)")
    x.add_argument("--variant", help="only this variant's segments")
    x.add_argument(
        "--min-agreement",
        type=float,
        default=0.0,
        help="only segments whose AI text agrees with the reviewer's at least this much, 1 - WER (default 0: all)",
    )
    x.add_argument("--margin-s", type=float, default=0.1, help="audio kept on each side of a segment (default 0.1)")
    x.add_argument("--splits", default="0.8,0.1,0.1", metavar="TRAIN,DEV,TEST", help="shares (default 0.8,0.1,0.1)")
    x.add_argument("--seed", type=int, default=0, help="the split hash's seed (default 0)")
    x.add_argument(
        "--no-speech", choices=("skip", "keep"), default="skip", help="segments reviewed as no speech (default skip)"
    )
    x.set_defaults(func=cmd_export)


def cmd_threshold(args: argparse.Namespace) -> int:
    from speechpipe.pipeline.review.store import ReviewStore
    from speechpipe.pipeline.review.threshold import curve, pick

    if not 0.0 < args.target_errors <= 1.0:
        print("speechpipe review: --target-errors must lie in (0, 1]", file=sys.stderr)
        return 2
    store = ReviewStore(args.db)
    try:
        rows = store.reviewed(args.variant)
    finally:
        store.close()
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    if not by_variant:
        print("speechpipe review: no reviewed segment with an AI confidence yet", file=sys.stderr)
        return 1
    out = {}
    for variant, items in sorted(by_variant.items()):
        points = curve(items)
        chosen = pick(points, args.target_errors)
        out[variant] = {"segments": len(items), "pick": chosen.to_dict(), "curve": [p.to_dict() for p in points]}
        if not args.json:
            print(
                f"{variant}: {len(items)} reviewed segments, AI WER {chosen.wer_before:.1%}. "
                f"review_below = {chosen.threshold:.3f} catches {chosen.caught:.0%} of the word errors "
                f"by sending {chosen.sent:.0%} of the segments to review; clients' WER {chosen.wer_after:.1%}"
            )
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from speechpipe.pipeline.config import load_config
    from speechpipe.pipeline.review.export import ExportOptions, parse_since, plan
    from speechpipe.pipeline.review.export_files import (
        ExportDirError,
        arguments_of,
        check_output,
        clip_reader,
        read_reviewed,
        write_export,
    )
    from speechpipe.pipeline.review.store import ReviewStore, default_data_dir

    def fail(message: str) -> int:
        print(f"speechpipe review export: {message}", file=sys.stderr)
        return 2

    try:
        shares = tuple(float(v) for v in args.splits.split(","))
    except ValueError:
        return fail(f"--splits {args.splits!r}: expected three shares TRAIN,DEV,TEST (e.g. 0.8,0.1,0.1)")
    try:
        since = parse_since(args.since) if args.since else None
        options = ExportOptions(
            since, args.variant, args.min_agreement, args.margin_s, shares, args.seed, args.no_speech
        )
    except ValueError as exc:
        return fail(str(exc))
    out = Path(args.output)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir(args.db)
    if "://" not in args.db and not Path(args.db).is_file():
        return fail(f"no review database at {args.db}")
    if not data_dir.is_dir():
        return fail(f"no audio folder at {data_dir} (--data-dir: the server's [review] data_dir)")
    try:
        check_output(out)
    except ExportDirError as exc:
        return fail(str(exc))
    config = load_config(args.config) if args.config else None

    def model_of(variant: str) -> str:
        known = config is not None and variant in config.variant_names()
        return config.for_variant(variant).asr.model if known else variant

    try:
        store = ReviewStore(args.db)
        try:
            rows = read_reviewed(store)
        finally:
            store.close()
    except (ValueError, ModuleNotFoundError, SQLAlchemyError) as exc:  # a newer schema, no driver, no database
        return fail(f"the review database cannot be read: {exc}")
    reader = clip_reader(data_dir)
    p = plan(rows, options, reader, model_of)
    doc = write_export(p, out, reader, arguments_of(args.db, data_dir, args.config, options), time.time())
    for problem in doc["problems"]:
        print(
            f"speechpipe review export: session {problem['session']} segment {problem['segment']} "
            f"(item {problem['item']}) left out, {problem['cause']}: {problem['error']}",
            file=sys.stderr,
        )
    print(summary_lines(doc, out))
    return 0


def summary_lines(doc: dict, out: Path) -> str:
    """What ``export.json`` says, for people."""
    t = doc["total"]
    lines = [f"{t['segments']} segments, {t['seconds']:.1f} s, {t['words']} words exported to {out}/"]
    for name, s in doc["splits"].items():
        empty = "" if s["segments"] else " (no folder)"
        lines.append(f"  {name}: {s['segments']} segments, {s['seconds']:.1f} s, {s['words']} words{empty}")
    left = ", ".join(f"{cause} {n}" for cause, n in doc["left_out"].items()) or "nothing"
    files = doc["files"]
    lines.append(f"  left out: {left}")
    lines.append(f"  files: {files['written']} written, {files['reused']} already there, {files['removed']} removed")
    return "\n".join(lines)
