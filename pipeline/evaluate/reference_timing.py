"""Reference word times: a whole-file pass per file, shared by every variant and cached on disk."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechpipe.pipeline.evaluate.datasets import DatasetItem
from speechpipe.pipeline.evaluate.quality import evaluation as ev
from speechpipe.pipeline.evaluate.quality.wer import normalized_words, score
from speechpipe.pipeline.evaluate.quality.word_timing import (
    BOUNDARY_TOLERANCE_S,
    RawWord,
    TimedWord,
    edge_errors,
    plan_windows,
    snap_to_energy,
    timed_tokens,
    timing_agreement,
    transcript_times,
)
from speechpipe.pipeline.offline.outputs import atomic_write_text
from speechpipe.pipeline.offline.runner import FILE_ERRORS
from speechpipe.stages.align import ForcedAligner
from speechpipe.stages.asr import AsrEngine
from speechpipe.stages.audio import load_audio
from speechpipe.stages.pcm import SAMPLE_RATE

#: bump when the reference-timing method changes, so cached timings are recomputed.
TIMING_VERSION = 3


def _forced_text(reference: str) -> str:
    # All-caps references (LibriSpeech) are lowercased: Whisper rarely saw shouted text, and its
    # attention aligns ordinary casing more tightly. Scoring is case-insensitive either way.
    return reference.lower() if reference.isupper() else reference


class ReferenceTimer:
    """Times reference words on the unsegmented audio (see :mod:`speechpipe.pipeline.evaluate.quality.attribution`),
    once per file and model, cached as JSON under ``cache_dir``."""

    def __init__(self, engine: AsrEngine, cache_dir: Path | None = None) -> None:
        self.engine = engine
        self.aligner = ForcedAligner(engine.model, engine.config.language)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.computed = 0
        self.cached = 0

    def _key(self, path: Path, reference: str) -> str:
        h = hashlib.sha256()
        h.update(path.read_bytes())
        cfg = self.engine.config
        h.update(json.dumps([reference, cfg.model, cfg.beam_size, cfg.language, TIMING_VERSION]).encode())
        return h.hexdigest()[:24]

    def _cached(self, key: str, make: Callable[[], dict]) -> dict:
        cache = self.cache_dir / f"{key}.json" if self.cache_dir else None
        if cache is not None and cache.is_file():
            try:
                doc = json.loads(cache.read_text(encoding="utf-8"))
                self.cached += 1
                return doc
            except ValueError:
                pass
        doc = make()
        self.computed += 1
        if cache is not None:
            atomic_write_text(cache, json.dumps(doc) + "\n")
        return doc

    def has(self, path: Path, reference: str) -> bool:
        """Whether the cache holds this file's reference timing."""
        return self.cache_dir is not None and (self.cache_dir / f"{self._key(path, reference)}.json").is_file()

    def store(self, path: Path, reference: str, doc: dict) -> None:
        """Cache a reference timing computed elsewhere (on a Ray actor, with the same model)."""
        if self.cache_dir is not None:
            atomic_write_text(self.cache_dir / f"{self._key(path, reference)}.json", json.dumps(doc) + "\n")

    def timing(self, path: Path, reference: str, audio: np.ndarray | None = None) -> dict:
        """The reference timing of one file (a dict, see :meth:`compute`)."""
        return self._cached(
            self._key(path, reference),
            lambda: self.compute(audio if audio is not None else load_audio(path)[0], reference),
        )

    def label_check(self, path: Path, labels: list[tuple[float, float]], audio: np.ndarray | None = None) -> dict:
        """Check the timing method against human VAD labels on a file without a reference: time the
        words of its own whole-file transcript exactly as references are timed, then measure how far
        the first and last word of each labelled region fall from the region's edges
        (:func:`~speechpipe.pipeline.evaluate.quality.attribution.edge_errors`)."""

        def make() -> dict:
            a = audio if audio is not None else load_audio(path)[0]
            transcription = self.transcribe_whole(a)
            if not normalized_words(transcription[0]):
                return edge_errors([], labels)
            return edge_errors(_timed(self.compute(a, transcription[0], transcription=transcription)), labels)

        return self._cached(self._key(path, "label-check " + json.dumps(labels)), make)

    def transcribe_whole(self, audio: np.ndarray) -> tuple[str, list[RawWord]]:
        """Plain faster-whisper over the whole, unsegmented audio (its own 30 s seeking for long
        files), with the engine's decoding settings and word timestamps."""
        cfg = self.engine.config
        segments, _info = self.engine.model.transcribe(
            audio,
            language=cfg.language,
            beam_size=cfg.beam_size,
            temperature=list(cfg.temperatures),
            compression_ratio_threshold=cfg.compression_ratio_threshold,
            log_prob_threshold=cfg.logprob_threshold,
            condition_on_previous_text=False,
            word_timestamps=True,
            vad_filter=False,
        )
        segments = list(segments)
        text = " ".join(s.text.strip() for s in segments if s.text.strip())
        raw = [RawWord(w.word, float(w.start), float(w.end)) for s in segments for w in (s.words or [])]
        return text, raw

    def compute(
        self, audio: np.ndarray, reference: str, transcription: tuple[str, list[RawWord]] | None = None
    ) -> dict:
        """Transcript pass, forced pass, energy snap; returns the words and reliability figures.
        ``transcription`` reuses an existing :meth:`transcribe_whole` result."""
        duration = audio.size / SAMPLE_RATE
        t0 = time.perf_counter()
        text, raw = transcription if transcription is not None else self.transcribe_whole(audio)
        transcript_words = timed_tokens(raw, normalized_words(text))
        by_transcript = transcript_times(reference, transcript_words)
        ref_norm = normalized_words(reference)
        method = "transcript"
        forced: list[TimedWord] | None = None
        error = None
        windows = 0
        if ref_norm:
            try:
                forced, windows = self._forced(audio, reference, ref_norm, by_transcript)
                method = "forced"
            except Exception as exc:  # noqa: BLE001  # fall back to the transcript pass, and say so
                error = f"{type(exc).__name__}: {exc}"
        chosen = forced if forced is not None else by_transcript
        snapped = snap_to_energy(chosen, audio)
        return {
            "method": method,
            "model": self.engine.model_name,
            "beam_size": self.engine.config.beam_size,
            "version": TIMING_VERSION,
            "duration": round(duration, 3),
            "transcript": text,
            "transcript_wer": score(reference, text).to_dict(),
            "ref_words": len(ref_norm),
            "anchored": sum(w.source == "equal" for w in by_transcript),
            "windows": windows,
            "forced_error": error,
            "agreement": timing_agreement(by_transcript, forced) if forced is not None else None,
            "words": [w.to_dict() for w in snapped],
            "forced_words": [w.to_dict() for w in forced] if forced is not None else None,
            "transcript_words": [w.to_dict() for w in by_transcript],
            "wall_s": round(time.perf_counter() - t0, 3),
        }

    def _forced(
        self, audio: np.ndarray, reference: str, ref_norm: list[str], approx: list[TimedWord]
    ) -> tuple[list[TimedWord], int]:
        duration = audio.size / SAMPLE_RATE
        raw_ref = _forced_text(reference).split()
        # Which raw reference words each normalized word came from ("index time" trick), to give
        # raw words approximate times for cutting windows.
        idx = timed_tokens([RawWord(w, float(i), float(i + 1)) for i, w in enumerate(raw_ref)], ref_norm)
        approx_raw: list[tuple[float, float] | None] = [None] * len(raw_ref)
        for tok, where in zip(approx, idx):
            lo = int(where.start)
            hi = max(lo + 1, int(np.ceil(where.end - 1e-9)))
            for i in range(lo, min(hi, len(raw_ref))):
                cur = approx_raw[i]
                approx_raw[i] = (tok.start, tok.end) if cur is None else (min(cur[0], tok.start), max(cur[1], tok.end))
        last = (0.0, 0.0)
        filled = []
        for t in approx_raw:
            last = t if t is not None else (last[1], last[1])
            filled.append(last)
        aligned: list[RawWord] = []
        plan = plan_windows(filled, duration)
        for start, end, first, stop in plan:
            if stop <= first:
                continue
            a, b = int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)
            words = self.aligner.align(audio[a:b], " ".join(raw_ref[first:stop]), offset_s=start)
            aligned += [RawWord(w.word, w.start, w.end) for w in words]
        out = timed_tokens(aligned, ref_norm)
        return [
            TimedWord(w.word, w.start, w.end, None, "forced" if w.source != "interpolated" else "interpolated")
            for w in out
        ], len(plan)


def _timed(doc: dict, key: str = "words") -> list[TimedWord]:
    return [TimedWord(w["word"], w["start"], w["end"], w.get("segment"), w.get("source", "word")) for w in doc[key]]


def label_check_summary(checks: dict[str, dict], tolerance: float) -> dict | None:
    """Pooled :meth:`ReferenceTimer.label_check` figures: how far timed words fall from the edges
    of human-labelled speech regions."""
    on = np.abs([x for c in checks.values() for x in c["onset"]])
    off = np.abs([x for c in checks.values() for x in c["offset"]])
    if on.size == 0:
        return None
    words = sum(c["words"] for c in checks.values())
    both = np.concatenate([on, off])
    return {
        "files": len(checks),
        "regions": int(on.size),
        "onset_median_s": round(float(np.median(on)), 3),
        "onset_p90_s": round(float(np.percentile(on, 90)), 3),
        "offset_median_s": round(float(np.median(off)), 3),
        "offset_p90_s": round(float(np.percentile(off, 90)), 3),
        "edges_within_tolerance": round(float(np.mean(both <= tolerance)), 4),
        "words": words,
        "words_in_speech": round(sum(c["words_in_speech"] for c in checks.values()) / words, 4) if words else None,
    }


def timing_summary(timings: dict[str, dict]) -> dict:
    """Reliability figures of the reference timing over all timed files."""
    per_file = []
    agree_pairs_s, agree_pairs_e = [], []
    snap_s: list[float] = []
    snap_e: list[float] = []
    exact = 0
    for fid, doc in timings.items():
        wer = doc["transcript_wer"]
        exact += wer["ref_words"] > 0 and wer["substitutions"] + wer["deletions"] + wer["insertions"] == 0
        per_file.append(
            {
                "file": fid,
                "method": doc["method"],
                "ref_words": doc["ref_words"],
                "anchored": doc["anchored"],
                "transcript_wer": wer["wer"],
                "agreement": doc["agreement"],
                "forced_error": doc["forced_error"],
            }
        )
        if doc["method"] == "forced":
            fw = _timed(doc, "forced_words")
            tw = _timed(doc, "transcript_words")
            for x, y in zip(tw, fw):
                if x.source == "equal":
                    agree_pairs_s.append(abs(x.start - y.start))
                    agree_pairs_e.append(abs(x.end - y.end))
        final, before = _timed(doc), _timed(doc, "forced_words" if doc["method"] == "forced" else "transcript_words")
        snap_s += [abs(x.start - y.start) for x, y in zip(final, before)]
        snap_e += [abs(x.end - y.end) for x, y in zip(final, before)]
    ref_words = sum(p["ref_words"] for p in per_file)
    out: dict = {
        "files": len(per_file),
        "forced_files": sum(p["method"] == "forced" for p in per_file),
        "ref_words": ref_words,
        "anchored_fraction": round(sum(p["anchored"] for p in per_file) / ref_words, 4) if ref_words else None,
        "exact_transcript_files": int(exact),
        "per_file": per_file,
    }
    if agree_pairs_s:
        ds, de = np.array(agree_pairs_s), np.array(agree_pairs_e)
        tol = BOUNDARY_TOLERANCE_S
        out["forced_vs_transcript"] = {
            "words": int(ds.size),
            "start_median_s": round(float(np.median(ds)), 3),
            "start_p90_s": round(float(np.percentile(ds, 90)), 3),
            "end_median_s": round(float(np.median(de)), 3),
            "end_p90_s": round(float(np.percentile(de, 90)), 3),
            "within_tolerance": round(float(np.mean((ds <= tol) & (de <= tol))), 4),
        }
    if snap_s:
        out["energy_snap"] = {
            "words": len(snap_s),
            "moved": round(float(np.mean((np.array(snap_s) > 0.005) | (np.array(snap_e) > 0.005))), 4),
            "start_shift_median_s": round(float(np.median(snap_s)), 3),
            "start_shift_p90_s": round(float(np.percentile(snap_s, 90)), 3),
            "end_shift_median_s": round(float(np.median(snap_e)), 3),
            "end_shift_p90_s": round(float(np.percentile(snap_e, 90)), 3),
        }
    return out


@dataclass
class ReferenceTruths:
    """What is known of each usable file before any variant runs: its truth (duration,
    reference, labels, timed reference words), the timing documents, label checks and envelopes."""

    usable: list[DatasetItem] = field(default_factory=list)
    truths: dict[str, ev.FileTruth] = field(default_factory=dict)
    timings: dict[str, dict] = field(default_factory=dict)
    label_checks: dict[str, dict] = field(default_factory=dict)
    envelopes: dict[str, list[float]] = field(default_factory=dict)


def reference_truths(
    items: list[DatasetItem], timer: ReferenceTimer, label_check: bool, log: Callable[[str], None], failures: list[dict]
) -> ReferenceTruths:
    """Decode each file once, time its reference words (or check the timing method against its
    labels); files that cannot be decoded go to ``failures`` and are left out."""
    out = ReferenceTruths()
    for k, item in enumerate(items, 1):
        try:
            audio, _info = load_audio(item.path)
        except FILE_ERRORS as exc:
            failures.append({"file": item.file_id, "error": str(exc) or type(exc).__name__})
            log(f"error: {item.file_id}: {exc}")
            continue
        truth = ev.FileTruth(item.file_id, audio.size / SAMPLE_RATE, item.reference, item.labels)
        out.envelopes[item.file_id] = envelope(audio)
        if item.reference is not None and normalized_words(item.reference):
            doc = timer.timing(item.path, item.reference, audio)
            out.timings[item.file_id] = doc
            truth.ref_words = _timed(doc)
            log(f"reference timing {k}/{len(items)}: {item.file_id} ({doc['method']})")
            if item.labels is not None:
                out.label_checks[item.file_id] = edge_errors(truth.ref_words, item.labels)
        elif item.labels and label_check:
            out.label_checks[item.file_id] = timer.label_check(item.path, item.labels, audio)
            log(f"timing check against labels {k}/{len(items)}: {item.file_id}")
        out.truths[item.file_id] = truth
        out.usable.append(item)
    return out


def envelope(audio: np.ndarray, points_per_s: int = 50) -> list[float]:
    """Peak envelope of the audio for timeline plots (``points_per_s`` values per second)."""
    hop = SAMPLE_RATE // points_per_s
    frames = audio.size // hop
    if frames == 0:
        return []
    return [round(float(x), 4) for x in np.abs(audio[: frames * hop]).reshape(frames, hop).max(axis=1)]
