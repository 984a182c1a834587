"""Print the span trees of an OTLP JSON lines file (what ``--trace-file`` writes) as text.

    python -m speechpipe.telemetry.spantree traces.jsonl [--attrs key1,key2,...]

One block per trace: each span indented under its parent, with its offset from the trace start,
its duration, the chosen attributes and its links. A quick look without starting Jaeger.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

DEFAULT_ATTRS = (
    "file",
    "stream.id",
    "segment.index",
    "segment.start_s",
    "segment.end_s",
    "vad.end_reason",
    "vad.speech_ratio",
    "vad.config_id",
    "asr.kind",
    "audio.duration_s",
    "asr.rtf",
    "asr.words",
    "asr.dropped",
    "asr.segment_indices",
)


def _value(v: dict) -> Any:
    if not v:
        return None
    kind, val = next(iter(v.items()))
    if kind == "arrayValue":
        return [_value(x) for x in val.get("values", [])]
    if kind == "intValue":
        return int(val)
    return val


def read_spans(path: str | Path) -> list[dict]:
    """Spans of an OTLP JSON lines file as flat dicts (name, ids, times in ns, attributes, links)."""
    spans = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        for rs in json.loads(line).get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    spans.append(
                        {
                            "name": s["name"],
                            "trace_id": s["traceId"],
                            "span_id": s["spanId"],
                            "parent_id": s.get("parentSpanId", ""),
                            "start": int(s["startTimeUnixNano"]),
                            "end": int(s["endTimeUnixNano"]),
                            "attributes": {a["key"]: _value(a["value"]) for a in s.get("attributes", [])},
                            "links": [(link["traceId"], link["spanId"]) for link in s.get("links", [])],
                        }
                    )
    return spans


def format_trees(spans: list[dict], attrs: tuple[str, ...] = DEFAULT_ATTRS) -> str:
    """Text rendering of ``spans`` (see :func:`read_spans`), one tree per trace, children by start time."""
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str, list[dict]] = defaultdict(list)
    roots = []
    for s in spans:
        if s["parent_id"] and s["parent_id"] in by_id:
            children[s["parent_id"]].append(s)
        else:
            roots.append(s)
    lines: list[str] = []

    def label(s: dict) -> str:
        if s["name"] == "vad.segment":
            return f"vad.segment#{s['attributes'].get('segment.index')}"
        if s["name"] == "asr.transcribe":
            return f"asr.transcribe[job {s['attributes'].get('asr.job_id')}]"
        return s["name"]

    def walk(s: dict, depth: int, t0: int) -> None:
        shown = {k: s["attributes"][k] for k in attrs if k in s["attributes"]}
        links = [label(by_id[sid]) if sid in by_id else f"{tid[:8]}/{sid[:8]}" for tid, sid in s["links"]]
        text = (
            f"{'  ' * depth}{label(s)}  +{(s['start'] - t0) / 1e6:.1f} ms, {(s['end'] - s['start']) / 1e6:.1f} ms  "
            + " ".join(f"{k}={v}" for k, v in shown.items())
        )
        if links:
            text += "  links->" + ",".join(links)
        lines.append(text.rstrip())
        for c in sorted(children[s["span_id"]], key=lambda c: (c["start"], c["name"])):
            walk(c, depth + 1, t0)

    for root in sorted(roots, key=lambda r: r["start"]):
        lines.append(f"trace {root['trace_id']}")
        walk(root, 1, root["start"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m speechpipe.telemetry.spantree", description=__doc__.splitlines()[0])
    p.add_argument("file", help="OTLP JSON lines file (speechpipe --trace-file)")
    p.add_argument("--attrs", help="comma-separated attribute keys to show (default: a useful set)")
    args = p.parse_args(argv)
    attrs = tuple(a for a in args.attrs.split(",") if a) if args.attrs else DEFAULT_ATTRS
    print(format_trees(read_spans(args.file), attrs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
