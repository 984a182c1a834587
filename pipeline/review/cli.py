"""``speechpipe review threshold``: the confidence threshold of ``partial`` that catches a target
share of the AI's word errors, from the segments people reviewed, and the load it implies."""

from __future__ import annotations

import argparse
import json
import sys
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
