"""The evaluation report: one self-contained HTML page with embedded matplotlib plots.

:func:`render_report` takes the eval.json document (see docs/evaluation.md) and returns the page:
a variant table, WER with its attribution as stacked bars, WER against ASR compute (the sweep
view), the WER estimated without references beside the true one (with ``--calibration``), what changed between variants file by file, per-file timelines (reference speech, each
variant's segments, errors marked by category), how reliable the reference word times are, and the
per-file rows. Plots are PNGs inlined as data URIs, so the page opens anywhere without network.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

from speechpipe.pipeline.evaluate.quality.attribution import CATEGORIES
from speechpipe.pipeline.evaluate.report.plots import (
    LABELS,
    plot_attribution,
    plot_compute,
    plot_estimates,
    plot_timeline,
)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin-top:34px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
td{white-space:nowrap}td.l{white-space:normal}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.meta{color:#666;font-size:13px}.note{color:#555;font-size:13px;max-width:900px}
.worse{color:#b00020}.better{color:#1b7a1b}
img{max-width:100%;height:auto;display:block;margin:6px 0}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
code{background:#f4f4f4;padding:0 3px}
.chip{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _estimated(est: dict | None) -> str:
    """An ``estimated`` figure as ``4.10% [2.5–5.7]`` (– without an estimate)."""
    if not est or est["estimated_wer"] is None:
        return "–"
    return f"{_pct(est['estimated_wer'])} [{est['low'] * 100:.1f}–{est['high'] * 100:.1f}]"


def _variant_table(doc: dict) -> str:
    with_est = any("estimated" in v for v in doc["variants"].values())
    acc_head = (
        "<tr><th class=l>variant</th><th>VAD id</th><th>WER</th>"
        + ("<th>est. WER [90 %]</th>" if with_est else "")
        + "<th>S</th><th>D</th><th>I</th><th>CER</th>"
        "<th>VAD dropped</th><th>boundary</th><th>ASR</th><th>empty outputs</th><th>words on non-speech</th>"
        "<th>audio to ASR s</th><th>ASR calls</th><th>ASR s per audio s</th></tr>"
    )
    vad_head = (
        "<tr><th class=l>variant</th><th>VAD P</th><th>VAD R</th><th>VAD F1</th><th>speech ratio</th><th>coverage</th>"
        "<th>segments</th><th>segments /min</th><th>mean segment s</th><th>forced splits</th><th>discarded</th>"
        "<th>speech regions missed</th><th>onset clipped</th><th>offset clipped</th></tr>"
    )
    acc, vadr = [], []
    for name, v in doc["variants"].items():
        vad, e, clip = v["vad"], v["errors"], v["vad"]["clipping"]
        label = _e(name) + (" (baseline)" if name == doc["baseline"] else "")
        acc.append(
            f"<tr><td class=l>{label}</td><td>{_e(v['vad_config_id'])}</td><td><b>{_pct(v['wer'])}</b></td>"
            + (f"<td>{_estimated(v.get('estimated'))}</td>" if with_est else "")
            + f"<td>{v['substitutions']}</td><td>{v['deletions']}</td><td>{v['insertions']}</td><td>{_pct(v['cer'])}</td>"
            f"<td>{e['vad_dropped']}</td><td>{e['boundary']}</td><td>{e['asr']}</td><td>{v['empty_outputs']}</td>"
            f"<td>{v['hallucinated_words']}</td><td>{v['asr_audio_s']:.1f}</td><td>{v['asr_calls']}</td>"
            f"<td>{v['asr_s_per_audio_s']:.3f}</td></tr>"
        )
        vadr.append(
            f"<tr><td class=l>{label}</td><td>{_num(vad['precision'])}</td><td>{_num(vad['recall'])}</td>"
            f"<td><b>{_num(vad['f1'])}</b></td><td>{_num(vad['speech_ratio'])}</td><td>{_num(vad['coverage'])}</td>"
            f"<td>{vad['segments']}</td><td>{_num(vad['segments_per_min'], 1)}</td><td>{_num(vad['mean_segment_s'], 2)}</td>"
            f"<td>{vad['forced_splits']}</td><td>{vad['discarded']}</td><td>{clip['missed']}/{clip['regions']}</td>"
            f"<td>{clip['onset_clipped']} ({clip['onset_clip_s']:.2f} s)</td>"
            f"<td>{clip['offset_clipped']} ({clip['offset_clip_s']:.2f} s)</td></tr>"
        )
    u = doc.get("unsegmented")
    if u:
        acc.append(
            f"<tr><td class=l><i>whole files, no VAD</i></td><td></td><td>{_pct(u['wer'])}</td>"
            + ("<td></td>" if with_est else "")
            + f"<td>{u['substitutions']}</td>"
            f"<td>{u['deletions']}</td><td>{u['insertions']}</td>" + "<td></td>" * 9 + "</tr>"
        )
    labelled = next(iter(doc["variants"].values()))["vad"]["labelled_files"]
    return (
        f"<h3>Accuracy and compute</h3><table>{acc_head}{''.join(acc)}</table>"
        f"<h3>VAD</h3><p class=note>Precision, recall and F1 over 10 ms frames of the {labelled} files with human "
        "labels. Speech ratio: frames the VAD called speech; coverage: share of the audio inside segments. Clipping: "
        f"reference speech regions whose start (onset) or end (offset) the segments miss by more than {doc['settings']['clip_min_s']} s.</p>"
        f"<table>{vad_head}{''.join(vadr)}</table>"
    )


def _estimate_html(doc: dict) -> str:
    """The WER estimated without references against the true WER, per variant and per file
    ("" without ``--calibration``)."""
    rows = []
    for name, v in doc["variants"].items():
        est = v.get("estimated")
        if est is None:
            continue
        covered = {True: "yes", False: "<span class=worse>no</span>", None: "–"}[est["covered"]]
        cal = est["calibration"]
        rows.append(
            f"<tr><td class=l>{_e(name)}</td><td><b>{_pct(est['true_wer'])}</b></td><td>{_estimated(est)}</td>"
            f"<td>{covered}</td><td>{_pct(est['abs_error'])}</td><td>{est['files']}</td><td>{est['segments']}</td>"
            f"<td>{est['words']:.0f}</td><td class=l><code>{_e(cal['version'])}</code> ({_e(cal['source'])})</td></tr>"
        )
    if not rows:
        return ""
    return (
        "<h2>Estimated WER without references</h2>"
        "<p class=note>What the live drift monitor would say of each variant with no reference at all: expected word "
        "errors over expected reference words, from each segment's features (word probabilities, log-probability, "
        "speech without words, empty finals, guard drops) and the calibration of the baseline profile given with "
        "<code>--calibration</code>, over the files the true WER scores; the interval (90 %) holds the sampling error "
        "of the segments and the model's own. The calibration was fitted on segments decoded one per Whisper call, as "
        "live; a variant that packs several into a window has other confidences.</p>"
        "<table><tr><th class=l>variant</th><th>true WER</th><th>estimated WER [90 %]</th><th>interval holds the "
        "truth</th><th>|estimate − truth|</th><th>files</th><th>segments</th><th>expected reference words</th>"
        "<th class=l>calibration</th></tr>" + "".join(rows) + "</table>" + plot_estimates(doc["variants"])
    )


def _comparison_html(c: dict, limit: int = 12) -> str:
    d = c["wer_delta"]
    cls = "worse" if (d or 0) > 0 else "better" if (d or 0) < 0 else ""
    ed = c["errors_delta"]
    out = [
        f"<h3>{_e(c['variant'])} against {_e(c['baseline'])}: WER <span class={cls}>{'+' if (d or 0) > 0 else ''}{_pct(d)}</span></h3>",
        (
            f"<p class=note>Error count change by cause: VAD dropped {ed['vad_dropped']:+d}, boundary {ed['boundary']:+d}, ASR {ed['asr']:+d}. "
            f"{c['files_changed']} of {c['files_compared']} files changed (segments or text); {c['files_worse']} worse, {c['files_better']} better.</p>"
        ),
    ]
    ne, fe = c.get("new_errors"), c.get("fixed_errors")
    if ne is not None:
        out.append(
            "<table><tr><th class=l>word errors that changed</th>"
            + "".join(f"<th>{LABELS[k]}</th>" for k in CATEGORIES)
            + "<th>total</th></tr>"
            f"<tr><td class=l>new in {_e(c['variant'])}</td>"
            + "".join(f"<td>{ne[k]}</td>" for k in CATEGORIES)
            + f"<td>{sum(ne.values())}</td></tr>"
            f"<tr><td class=l>gone from {_e(c['baseline'])}</td>"
            + "".join(f"<td>{fe[k]}</td>" for k in CATEGORIES)
            + f"<td>{sum(fe.values())}</td></tr>"
            "</table><p class=note>Errors present in both runs are left out here: an error the baseline already made may move "
            "from 'ASR' to 'boundary' only because a new edge appeared next to it.</p>"
        )
    with_words = [f for f in c["files"] if f["words_changed"] or (f["wer_delta"] or 0) != 0]
    if len(with_words) < len(c["files"]):
        out.append(
            f"<p class=note>{len(c['files']) - len(with_words)} of the changed files only moved segment edges without "
            "changing a word; they are listed in eval.json.</p>"
        )
    files = with_words[:limit]
    if not files:
        return "".join(out)
    rows = []
    for f in files:
        d = f["wer_delta"]
        cls = "worse" if (d or 0) > 0 else "better" if (d or 0) < 0 else ""
        segs = "<br>".join(
            f"{g['start']:.2f}–{g['end']:.2f} s: "
            + " + ".join(f"[{s['start']:.2f}, {s['end']:.2f}]" for s in g["baseline"])
            + " → "
            + (" + ".join(f"[{s['start']:.2f}, {s['end']:.2f}]" for s in g["variant"]) or "none")
            for g in f["segments_changed"][:6]
        )
        if len(f["segments_changed"]) > 6:
            segs += f"<br>… {len(f['segments_changed']) - 6} more"
        words = "<br>".join(
            f"{w['start']:.2f} s: <i>{_e(w['baseline'])}</i> → <b>{_e(w['variant'])}</b>"
            for w in f["words_changed"][:8]
        )
        if len(f["words_changed"]) > 8:
            words += f"<br>… {len(f['words_changed']) - 8} more"
        rows.append(
            f"<tr><td class=l>{_e(f['file'])}</td><td>{_pct(f['wer_baseline'], 1)}</td><td>{_pct(f['wer_variant'], 1)}</td>"
            f"<td class={cls}>{'+' if (d or 0) > 0 else ''}{_pct(d, 1)}</td><td class=l>{segs}</td><td class=l>{words}</td></tr>"
        )
    more = (
        f"<p class=note>… and {len(with_words) - limit} more files with changed words in eval.json.</p>"
        if len(with_words) > limit
        else ""
    )
    out.append(
        "<table><tr><th class=l>file</th><th>WER before</th><th>WER after</th><th>Δ</th>"
        "<th class=l>segments whose boundaries differ (before → after)</th><th class=l>words that changed (before → after, cause)</th></tr>"
        + "".join(rows)
        + "</table>"
        + more
    )
    return "".join(out)


def _per_file_table(v: dict) -> str:
    rows = []
    with_est = "estimated" in v
    for r in v["per_file"]:
        w, e, vad = r["wer"], r["errors"], r["vad"]
        clip = vad.get("clipping", {})
        est = r.get("estimated") or {}
        est_cells = (
            f"<td>{_pct(est.get('estimated_wer'), 1)}</td>"
            f"<td>{_num(est.get('expected_errors'), 1)} / "
            f"{w['substitutions'] + w['deletions'] + w['insertions'] if w else '–'}</td>"
            if with_est
            else ""
        )
        rows.append(
            f"<tr><td class=l>{_e(r['file'])}</td><td>{r['duration']:.1f}</td><td>{_pct(w['wer'], 1) if w else '–'}</td>"
            + est_cells
            + f"<td>{w['substitutions'] if w else '–'}</td><td>{w['deletions'] if w else '–'}</td><td>{w['insertions'] if w else '–'}</td>"
            f"<td>{e['vad_dropped'] if e else '–'}</td><td>{e['boundary'] if e else '–'}</td><td>{e['asr'] if e else '–'}</td>"
            f"<td>{_num(vad.get('f1'))}</td><td>{vad['segments']}</td><td>{vad['forced_splits']}</td>"
            f"<td>{clip.get('onset_clipped', '–')}</td><td>{clip.get('offset_clipped', '–')}</td>"
            f"<td>{r['asr'].get('hallucinated_words', '–')}</td><td>{r['compute']['asr_audio_s']:.1f}</td>"
            f"<td class=l>{_e(r['text'][:140])}</td></tr>"
        )
    return (
        "<table><tr><th class=l>file</th><th>s</th><th>WER</th>"
        + ("<th>est. WER</th><th>expected / true errors</th>" if with_est else "")
        + "<th>S</th><th>D</th><th>I</th><th>VAD dropped</th>"
        "<th>boundary</th><th>ASR</th><th>VAD F1</th><th>segs</th><th>splits</th><th>onset clip</th><th>offset clip</th>"
        "<th>non-speech words</th><th>to ASR s</th><th class=l>transcript</th></tr>" + "".join(rows) + "</table>"
    )


def _timing_html(doc: dict) -> str:
    rt = doc.get("reference_timing") or {}
    if not rt.get("files") and not rt.get("label_check"):
        return "<p class=note>No file has a reference transcript or labels, so no reference timing was needed.</p>"
    if not rt.get("files"):
        rt = {
            **rt,
            "forced_files": 0,
            "files": 0,
            "anchored_fraction": None,
            "ref_words": 0,
            "exact_transcript_files": 0,
        }
    s = doc["settings"]["reference_timing"]
    parts = [
        (
            f"<p class=note>Reference words were timed on the unsegmented audio with <code>{_e(s['model'])}</code> "
            f"(beam {s['beam_size']}): forced alignment of the reference text on {rt['forced_files']} of {rt['files']} files, "
            f"the transcript pass elsewhere. {_pct(rt['anchored_fraction'], 1)} of the {rt['ref_words']} reference words were "
            f"also recognised verbatim by the whole-file transcription; {rt['exact_transcript_files']} files were transcribed "
            f"exactly. Boundary tolerance: {doc['settings']['boundary_tolerance_s']} s.</p>"
        )
    ]
    agr = rt.get("forced_vs_transcript")
    if agr:
        parts.append(
            "<table><tr><th class=l>forced vs transcript word times</th><th>words</th><th>start median</th><th>start p90</th>"
            "<th>end median</th><th>end p90</th><th>both within tolerance</th></tr>"
            f"<tr><td class=l>agreement</td><td>{agr['words']}</td><td>{agr['start_median_s']:.3f} s</td><td>{agr['start_p90_s']:.3f} s</td>"
            f"<td>{agr['end_median_s']:.3f} s</td><td>{agr['end_p90_s']:.3f} s</td><td>{_pct(agr['within_tolerance'], 1)}</td></tr></table>"
        )
    lc = rt.get("label_check")
    if lc:
        parts.append(
            "<table><tr><th class=l>word times against human labels</th><th>files</th><th>regions</th><th>|onset| median</th>"
            "<th>p90</th><th>|offset| median</th><th>p90</th><th>edges within tolerance</th><th>words inside labelled speech</th></tr>"
            f"<tr><td class=l>first/last word vs labelled region edge</td><td>{lc['files']}</td><td>{lc['regions']}</td>"
            f"<td>{lc['onset_median_s']:.3f} s</td><td>{lc['onset_p90_s']:.3f} s</td><td>{lc['offset_median_s']:.3f} s</td>"
            f"<td>{lc['offset_p90_s']:.3f} s</td><td>{_pct(lc['edges_within_tolerance'], 1)}</td><td>{_pct(lc['words_in_speech'], 1)}</td></tr></table>"
            "<p class=note>On the labelled files the same timing method runs on each file's own whole-file transcript; "
            "the distance of the first and last word of each labelled speech region from the region's edges bounds the "
            "timing error from above (a region may start with a breath or a word the recognizer missed).</p>"
        )
    snap = rt.get("energy_snap")
    if snap:
        parts.append(
            f"<p class=note>Energy snap (trimming silent 10 ms frames off word edges) moved {_pct(snap['moved'], 1)} of the words: "
            f"start by a median {snap['start_shift_median_s']:.3f} s (p90 {snap['start_shift_p90_s']:.3f} s), "
            f"end by a median {snap['end_shift_median_s']:.3f} s (p90 {snap['end_shift_p90_s']:.3f} s).</p>"
        )
    return "".join(parts)


def _pick_timelines(doc: dict, n: int) -> list[str]:
    picked: list[str] = []
    for c in doc["comparisons"]:
        for f in c["files"]:
            if (f["wer_delta"] or 0) > 0 and f["file"] not in picked:
                picked.append(f["file"])
    picked.sort(
        key=lambda fid: -max((f["wer_delta"] or 0) for c in doc["comparisons"] for f in c["files"] if f["file"] == fid)
    )
    if len(picked) < n:
        # Labelled files where the variants' VAD F1 differs most.
        spread = {}
        for v in doc["variants"].values():
            for r in v["per_file"]:
                if r["vad"].get("f1") is not None:
                    spread.setdefault(r["file"], []).append(r["vad"]["f1"])
        for fid, _ in sorted(spread.items(), key=lambda t: -(max(t[1]) - min(t[1]))):
            if fid not in picked:
                picked.append(fid)
            if len(picked) >= n:
                break
    if len(picked) < n:
        for v in doc["variants"].values():
            for r in v["per_file"]:
                if r["file"] not in picked and len(picked) < n:
                    picked.append(r["file"])
    return picked[:n]


def render_report(
    doc: dict,
    *,
    truths: Mapping | None = None,
    envelopes: Mapping[str, Sequence[float]] | None = None,
    timelines: int = 6,
) -> str:
    """The whole report page for an eval.json document.

    ``truths`` (file id -> :class:`~speechpipe.pipeline.evaluate.quality.evaluation.FileTruth`) and ``envelopes``
    (file id -> waveform peaks) add reference speech and waveforms to the timelines.
    """
    truths = truths or {}
    envelopes = envelopes or {}
    variants = doc["variants"]
    # Few variants: all of them in the timelines; a sweep: the named variants plus the baseline.
    shown = {n: v for n, v in variants.items() if not v["params"] or n == doc["baseline"]}
    if len(shown) < 2:
        shown = dict(list(variants.items())[:4])
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>speechpipe eval {_e(doc['run_id'])}</title><style>{CSS}</style></head><body>",
        "<h1>speechpipe evaluation</h1>",
        (
            f"<p class=meta>run <code>{_e(doc['run_id'])}</code> · {_e(doc['created'])} · {doc['files']} files from "
            f"{_e(', '.join(doc['datasets']))} · baseline <b>{_e(doc['baseline'])}</b> · {doc['wall_s']:.0f} s</p>"
        ),
    ]
    if doc["failed"]:
        parts.append(
            "<p class=worse>Failed: "
            + "; ".join(_e(f"{f.get('variant', '')} {f['file']}: {f['error']}") for f in doc["failed"])
            + "</p>"
        )
    parts += [
        "<h2>Variants</h2>",
        (
            "<p class=note>WER over files with a reference transcript (errors summed over files, then divided). "
            "Errors by cause: <span class=chip style='background:#d62728'></span>VAD dropped (the reference word lies in audio no "
            "segment covered), <span class=chip style='background:#ff7f0e'></span>boundary (within the tolerance of a segment edge, "
            "or across two segments), <span class=chip style='background:#1f77b4'></span>ASR (inside a segment, away from its edges). "
            "VAD precision/recall/F1 at 10 ms frames against the human labels; clipping against reference speech.</p>"
        ),
        _variant_table(doc),
        plot_attribution(variants, doc.get("unsegmented")),
        _estimate_html(doc),
        "<h2>WER against compute</h2>",
        "<p class=note>Each point is a variant: fewer seconds sent to ASR cost less, at what WER.</p>",
        plot_compute(variants, doc["sweep"]["keys"]),
    ]
    if doc["sweep"]["rows"]:
        rows = "".join(
            f"<tr><td class=l>{_e(r['variant'])}</td><td>{_pct(r['wer'])}</td><td>{r['errors']['vad_dropped']}</td>"
            f"<td>{r['errors']['boundary']}</td><td>{r['errors']['asr']}</td><td>{_num(r['vad_f1'])}</td><td>{r['segments']}</td>"
            f"<td>{r['asr_audio_s']:.1f}</td><td>{r['asr_s_per_audio_s']:.3f}</td></tr>"
            for r in sorted(
                doc["sweep"]["rows"], key=lambda r: (r["wer"] if r["wer"] is not None else 9, r["asr_audio_s"])
            )
        )
        parts.append(
            "<h3>Sweep, best WER first</h3><table><tr><th class=l>combination</th><th>WER</th><th>VAD dropped</th><th>boundary</th>"
            f"<th>ASR</th><th>VAD F1</th><th>segments</th><th>audio to ASR s</th><th>ASR s per audio s</th></tr>{rows}</table>"
        )
    if doc["comparisons"]:
        parts.append("<h2>What changed between variants</h2>")
        comps = sorted(doc["comparisons"], key=lambda c: c["variant"] not in shown)
        for c in comps[:6]:
            parts.append(_comparison_html(c))
        if len(comps) > 6:
            parts.append(f"<p class=note>{len(comps) - 6} more comparisons in eval.json.</p>")
    picked = _pick_timelines(doc, timelines)
    if picked:
        parts.append(
            "<h2>Timelines</h2><p class=note>Files that got worse first. Grey: reference speech; blue: each variant's "
            "VAD segments (a tick on top marks a split forced by the maximum length); markers: errors by cause "
            "(circle substitution, down triangle deletion, up triangle insertion).</p>"
        )
        for fid in picked:
            truth = truths.get(fid)
            duration = next(r["duration"] for v in variants.values() for r in v["per_file"] if r["file"] == fid)
            parts.append(plot_timeline(fid, duration, shown, truth, envelopes.get(fid)))
    parts += ["<h2>Reference timing</h2>", _timing_html(doc), "<h2>Per file</h2>"]
    for name, v in variants.items():
        parts.append(f"<details><summary>{_e(name)}: {v['files']} files</summary>{_per_file_table(v)}</details>")
    parts.append(
        "<p class=meta>Schema and method: docs/evaluation.md. Data: eval.json next to this page.</p></body></html>"
    )
    return "\n".join(parts)
