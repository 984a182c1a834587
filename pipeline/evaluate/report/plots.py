"""The evaluation report's plots: matplotlib figures rendered headless to inline PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from speechpipe.pipeline.evaluate.quality.attribution import CATEGORIES

COLORS = {"vad_dropped": "#d62728", "boundary": "#ff7f0e", "asr": "#1f77b4"}
LABELS = {"vad_dropped": "VAD dropped", "boundary": "segment boundary", "asr": "ASR (inside a segment)"}
MARKERS = {"substitute": "o", "delete": "v", "insert": "^"}
SEGMENT_COLOR = "#9ecae1"
SPEECH_COLOR = "#bdbdbd"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


# ---------------------------------------------------------------------------------- plots


def plot_attribution(variants: Mapping[str, dict], unsegmented: dict | None = None) -> str:
    """WER of each variant as a bar stacked by error category (percent of reference words)."""
    names = [n for n, v in variants.items() if v["wer"] is not None]
    if not names:
        return "<p class=note>No variant has reference transcripts to score.</p>"
    fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(names) + 2.5), 3.8))
    bottoms = [0.0] * len(names)
    for cat in CATEGORIES:
        vals = [variants[n]["errors_wer"][cat] * 100 for n in names]
        ax.bar(names, vals, bottom=bottoms, color=COLORS[cat], label=LABELS[cat], width=0.6)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    for i, n in enumerate(names):
        v = variants[n]
        unattributed = (v["wer"] * 100) - bottoms[i]
        label = f"{v['wer'] * 100:.2f}%"
        if abs(unattributed) > 0.01:
            ax.bar([n], [unattributed], bottom=[bottoms[i]], color="#cccccc", width=0.6)
        ax.text(i, max(bottoms[i], v["wer"] * 100) * 1.02 + 0.05, label, ha="center", va="bottom", fontsize=9)
    if unsegmented:
        ax.axhline(unsegmented["wer"] * 100, color="#555", ls="--", lw=1, label="whole files, no VAD")
    ax.set_ylabel("WER (%), by cause")
    ax.set_title("Word error rate and where the errors came from")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_ylim(0, max(bottoms + [1.0]) * 1.25)
    plt.setp(
        ax.get_xticklabels(),
        rotation=20 if len(names) > 4 else 0,
        ha="right" if len(names) > 4 else "center",
        fontsize=9,
    )
    return _png(fig)


def plot_compute(variants: Mapping[str, dict], sweep_keys: Sequence[str]) -> str:
    """WER against the audio seconds sent to ASR (and ASR seconds per audio second), one point per
    variant; a sweep's points are joined along its first key."""
    pts = [(n, v) for n, v in variants.items() if v["wer"] is not None]
    if not pts:
        return ""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, xlabel in (
        (axes[0], "asr_audio_s", "audio seconds sent to ASR"),
        (axes[1], "asr_s_per_audio_s", "ASR seconds per audio second"),
    ):
        swept = [(n, v) for n, v in pts if v["params"]]
        others = [(n, v) for n, v in pts if not v["params"]]
        if swept and sweep_keys:
            line_key = sweep_keys[0]
            group_keys = [k for k in sweep_keys if k != line_key]
            groups: dict = {}
            for n, v in swept:
                g = tuple(v["params"].get(k) for k in group_keys)
                groups.setdefault(g, []).append((v["params"].get(line_key), v))
            cmap = plt.get_cmap("viridis", max(2, len(groups)))
            for gi, (g, members) in enumerate(sorted(groups.items(), key=lambda t: str(t[0]))):
                members.sort(key=lambda t: (str(type(t[0])), t[0]))
                xs = [m[1][key] for m in members]
                ys = [m[1]["wer"] * 100 for m in members]
                label = ", ".join(f"{k.split('.')[-1]}={val}" for k, val in zip(group_keys, g)) or "sweep"
                ax.plot(xs, ys, "-o", color=cmap(gi), label=label, ms=5)
                for (lv, v), x, y in zip(members, xs, ys):
                    ax.annotate(str(lv), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for n, v in others:
            ax.plot([v[key]], [v["wer"] * 100], "s", ms=7, label=n)
            ax.annotate(n, (v[key], v["wer"] * 100), fontsize=8, xytext=(4, -10), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("WER (%)")
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(alpha=0.3)
    swept_keys = [k.split(".")[-1] for k in sweep_keys]
    title = f"points: {swept_keys[0]} (value next to each)" if swept_keys else None
    axes[0].legend(fontsize=7, frameon=False, title=title, title_fontsize=7)
    fig.suptitle("WER against ASR compute (lower left is better)", fontsize=11)
    return _png(fig)


def plot_estimates(variants: Mapping[str, dict]) -> str:
    """Per file, the estimated WER (from its segments' features alone) against the true WER, one
    colour per variant, with the diagonal where they agree ("" when no file has both)."""
    pts = {
        name: [
            (r["wer"]["wer"] * 100, r["estimated"]["estimated_wer"] * 100)
            for r in v["per_file"]
            if r["wer"] is not None and r.get("estimated") and r["estimated"]["estimated_wer"] is not None
        ]
        for name, v in variants.items()
    }
    pts = {name: xy for name, xy in pts.items() if xy}
    if not pts:
        return ""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    top = max(max(max(x, y) for x, y in xy) for xy in pts.values())
    top = max(top * 1.08, 5.0)
    ax.plot([0, top], [0, top], color="#555", ls="--", lw=1, label="estimate = truth")
    for name, xy in pts.items():
        ax.scatter([x for x, _ in xy], [y for _, y in xy], s=22, alpha=0.75, label=name)
    ax.set_xlim(-0.02 * top, top)  # a file decoded exactly sits on the left edge, not under it
    ax.set_ylim(-0.02 * top, top)
    ax.set_aspect("equal")
    ax.set_xlabel("true WER (%)")
    ax.set_ylabel("estimated WER (%)")
    ax.set_title("Per file: WER estimated without the reference", fontsize=10)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="best")
    return _png(fig)


def plot_timeline(
    file_id: str, duration: float, variants: Mapping[str, dict], truth, envelope: Sequence[float] | None
) -> str:
    """One file: the waveform, reference speech (labels, else the timed reference words), then per
    variant its segments with the errors marked by category (marker shape = substitution,
    deletion, insertion)."""
    rows = [(n, next((r for r in v["per_file"] if r["file"] == file_id), None)) for n, v in variants.items()]
    rows = [(n, r) for n, r in rows if r is not None]
    n_rows = len(rows) + 1
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.55 * n_rows + (0.6 if envelope else 0)))
    y_env = n_rows + 0.3
    if envelope:
        import numpy as np

        env = np.asarray(envelope)
        t = (np.arange(env.size) + 0.5) * (duration / max(env.size, 1))
        scale = 0.45 / (env.max() or 1.0)
        ax.fill_between(t, y_env - env * scale, y_env + env * scale, color="#777", lw=0)
    # Reference speech.
    y_ref = n_rows - 1
    speech = truth.speech() if truth is not None else None
    for a, b in speech or []:
        ax.add_patch(plt.Rectangle((a, y_ref - 0.3), b - a, 0.6, color=SPEECH_COLOR, lw=0))
    if truth is not None and truth.ref_words and duration <= 40:
        for i, w in enumerate(truth.ref_words):
            ax.text(
                (w.start + w.end) / 2,
                y_ref + (0.12 if i % 2 else -0.18),
                w.word,
                fontsize=6,
                ha="center",
                va="center",
                clip_on=True,
            )
    labels = ["reference speech" + (" (labels)" if truth is not None and truth.labels is not None else " (words)")]
    # Variants, top to bottom.
    for k, (name, row) in enumerate(rows):
        y = n_rows - 2 - k
        for s in row["segments"]:
            ax.add_patch(
                plt.Rectangle(
                    (s["start"], y - 0.3),
                    s["end"] - s["start"],
                    0.6,
                    facecolor=SEGMENT_COLOR,
                    edgecolor="#3182bd",
                    lw=0.8,
                )
            )
            if s["end_reason"] == "max_length":
                ax.plot([s["end"]], [y + 0.33], "k|", ms=8)
        for e in row["error_list"]:
            ax.plot(
                [(e["start"] + e["end"]) / 2],
                [y],
                MARKERS.get(e["op"], "o"),
                color=COLORS[e["category"]],
                ms=6,
                mec="k",
                mew=0.4,
            )
        for h in row["asr"].get("hallucinations", []):
            ax.plot([(h["start"] + h["end"]) / 2], [y], "*", color="#9467bd", ms=8, mec="k", mew=0.4)
        wer = f"  WER {row['wer']['wer'] * 100:.1f}%" if row["wer"] else ""
        f1 = f"  F1 {row['vad']['f1']:.2f}" if row["vad"].get("f1") is not None else ""
        labels.append(f"{name}{wer}{f1}")
    yt = [n_rows - 1 - i for i in range(n_rows)]
    ticks, ticklabels = yt, labels
    if envelope:
        ticks, ticklabels = [y_env] + yt, ["waveform"] + labels
    ax.set_yticks(ticks, ticklabels, fontsize=8)
    ax.set_xlim(0, duration)
    ax.set_ylim(-0.6, (y_env + 0.6) if envelope else n_rows - 0.4)
    ax.set_xlabel("seconds")
    ax.set_title(file_id, fontsize=10, loc="left")
    ax.spines[["top", "right", "left"]].set_visible(False)
    handles = [
        Patch(color=SPEECH_COLOR, label="reference speech"),
        Patch(facecolor=SEGMENT_COLOR, edgecolor="#3182bd", label="VAD segment"),
    ]
    handles += [Line2D([], [], ls="", marker="s", color=COLORS[c], label=LABELS[c]) for c in CATEGORIES]
    handles += [Line2D([], [], ls="", marker=m, color="#444", label=op) for op, m in MARKERS.items()]
    handles += [Line2D([], [], ls="", marker="*", color="#9467bd", label="word on non-speech")]
    ax.legend(handles=handles, fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.28), frameon=False)
    return _png(fig)


# ---------------------------------------------------------------------------------- tables
