"""What changed between two variants of an evaluation: per file, the segments that moved, the
errors that appeared and those that went away, and their causes; pure computations over the rows
of :mod:`speechpipe.pipeline.evaluate.quality.evaluation`."""

from __future__ import annotations

from collections.abc import Sequence

from speechpipe.pipeline.evaluate.quality.attribution import CATEGORIES
from speechpipe.pipeline.evaluate.quality.evaluation import BOUNDARY_CHANGE_S, FileTruth
from speechpipe.pipeline.evaluate.quality.wer import normalized_words


def _segment_changes(a: Sequence[dict], b: Sequence[dict]) -> list[dict]:
    """Groups of overlapping segments whose boundaries differ between two runs of one file."""

    def same(x: dict, y: dict) -> bool:
        return abs(x["start"] - y["start"]) <= BOUNDARY_CHANGE_S and abs(x["end"] - y["end"]) <= BOUNDARY_CHANGE_S

    changed_a = [x for x in a if not any(same(x, y) for y in b)]
    changed_b = [y for y in b if not any(same(x, y) for x in a)]
    # Cluster changed segments of either side that overlap in time.
    items = sorted([("a", x) for x in changed_a] + [("b", y) for y in changed_b], key=lambda t: t[1]["start"])
    groups: list[dict] = []
    for side, s in items:
        if groups and s["start"] < groups[-1]["end"]:
            g = groups[-1]
            g["end"] = max(g["end"], s["end"])
        else:
            g = {"start": s["start"], "end": s["end"], "baseline": [], "variant": []}
            groups.append(g)
        g["baseline" if side == "a" else "variant"].append(
            {k: s[k] for k in ("index", "start", "end", "end_reason", "text")}
        )
    return groups


def _word_states(row: dict, n_ref: int) -> tuple[list[dict | None], list[dict]]:
    """Per reference word: its error (or None when correct); plus the insertions."""
    per: list[dict | None] = [None] * n_ref
    ins = []
    for e in row["error_list"]:
        if e["ref_index"] is None:
            ins.append(e)
        else:
            per[e["ref_index"]] = e
    return per, ins


def compare_files(base: dict, var: dict, truth: FileTruth) -> dict | None:
    """How one file changed from ``base`` to ``var`` (rows of :func:`evaluate_file`); None when
    neither the transcript nor the segments changed."""
    seg_groups = _segment_changes(base["segments"], var["segments"])
    if base["text"] == var["text"] and not seg_groups:
        return None
    out: dict = {
        "file": base["file"],
        "wer_baseline": base["wer"]["wer"] if base["wer"] else None,
        "wer_variant": var["wer"]["wer"] if var["wer"] else None,
        "wer_delta": None,
        "errors_delta": None,
        "text_baseline": base["text"],
        "text_variant": var["text"],
        "segments_changed": seg_groups,
        "words_changed": [],
        "new_errors": None,
        "fixed_errors": None,
    }
    if base["wer"] and var["wer"]:
        out["wer_delta"] = round(var["wer"]["wer"] - base["wer"]["wer"], 4)
    if base["errors"] and var["errors"]:
        out["errors_delta"] = {k: var["errors"][k] - base["errors"][k] for k in CATEGORIES}
    if truth.reference is not None and truth.ref_words is not None:
        ref = normalized_words(truth.reference)
        pa, ia = _word_states(base, len(ref))
        pb, ib = _word_states(var, len(ref))
        changes = []
        new = dict.fromkeys(CATEGORIES, 0)
        fixed = dict.fromkeys(CATEGORIES, 0)
        for i, (x, y) in enumerate(zip(pa, pb)):
            if (x and (x["op"], x["hyp_word"])) == (y and (y["op"], y["hyp_word"])):
                continue
            if x:
                fixed[x["category"]] += 1
            if y:
                new[y["category"]] += 1
            w = truth.ref_words[i]
            changes.append(
                {
                    "ref_index": i,
                    "ref_word": ref[i],
                    "start": round(w.start, 3),
                    "end": round(w.end, 3),
                    "baseline": _state(x, ref[i]),
                    "variant": _state(y, ref[i]),
                }
            )
        for side, mine, other in (("variant", ib, ia), ("baseline", ia, ib)):
            for e in mine:
                # The same inserted word within 0.3 s in both runs is the same insertion.
                if not any(o["hyp_word"] == e["hyp_word"] and abs(o["start"] - e["start"]) <= 0.3 for o in other):
                    (new if side == "variant" else fixed)[e["category"]] += 1
                    changes.append(
                        {
                            "ref_index": None,
                            "ref_word": None,
                            "start": e["start"],
                            "end": e["end"],
                            "baseline": ("+" + e["hyp_word"] + f" ({e['category']})") if side == "baseline" else "",
                            "variant": ("+" + e["hyp_word"] + f" ({e['category']})") if side == "variant" else "",
                        }
                    )
        changes.sort(key=lambda c: c["start"])
        for c in changes:
            c["in_changed_segment"] = any(
                g["start"] - 0.25 <= c["end"] and c["start"] <= g["end"] + 0.25 for g in seg_groups
            )
        out["words_changed"] = changes
        out["new_errors"], out["fixed_errors"] = new, fixed
    return out


def _state(err: dict | None, ref_word: str) -> str:
    if err is None:
        return ref_word
    if err["op"] == "delete":
        return f"- ({err['category']})"
    return f"{err['hyp_word']} ({err['category']})"


def _estimated_delta(base: dict, var: dict) -> float | None:
    a, b = base["estimated"]["estimated_wer"], var["estimated"]["estimated_wer"]
    return None if a is None or b is None else round(b - a, 4)


def compare_variants(base: dict, var: dict, truths: dict[str, FileTruth]) -> dict:
    """Per-file WER deltas of ``var`` against ``base`` (variant summaries), with details of the
    files that changed; with both estimated WERs (``--calibration``), their difference too, the
    figure the canary's ``estimated_wer_delta`` gate judges."""
    base_rows = {r["file"]: r for r in base["per_file"]}
    files = []
    for row in var["per_file"]:
        b = base_rows.get(row["file"])
        if b is None:
            continue
        change = compare_files(b, row, truths[row["file"]])
        if change is not None:
            files.append(change)
    files.sort(key=lambda f: -(abs(f["wer_delta"]) if f["wer_delta"] is not None else 0.0))
    return {
        "baseline": base["name"],
        "variant": var["name"],
        "wer_delta": None if base["wer"] is None or var["wer"] is None else round(var["wer"] - base["wer"], 4),
        **({"estimated_wer_delta": _estimated_delta(base, var)} if "estimated" in base and "estimated" in var else {}),
        "errors_delta": {k: var["errors"][k] - base["errors"][k] for k in CATEGORIES},
        # Errors the variant made that the baseline did not (by the variant's cause), and errors of
        # the baseline the variant no longer makes (by the baseline's cause): new - fixed = delta.
        "new_errors": {k: sum((f["new_errors"] or {}).get(k, 0) for f in files) for k in CATEGORIES},
        "fixed_errors": {k: sum((f["fixed_errors"] or {}).get(k, 0) for f in files) for k in CATEGORIES},
        "files_compared": sum(1 for r in var["per_file"] if r["file"] in base_rows),
        "files_changed": len(files),
        "files_worse": sum(1 for f in files if (f["wer_delta"] or 0) > 0),
        "files_better": sum(1 for f in files if (f["wer_delta"] or 0) < 0),
        "files": files,
    }
