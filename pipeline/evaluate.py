"""``speechpipe eval``: run pipeline variants over labelled datasets and explain the differences.

Every variant runs every file through :func:`speechpipe.pipeline.offline.transcribe_file`, the same
:class:`~speechpipe.pipeline.session.StreamSession` path as ``speechpipe transcribe`` and the live
server; a session observer (:class:`EvalCollector`) records the VAD segments, the ASR runs and the
final transcripts. Reference word times come from a pass over the unsegmented audio that is the
same for all variants, so it runs once per file and is cached on disk
(:class:`ReferenceTimer`). The figures themselves are computed in
:mod:`speechpipe.telemetry.evaluation` and :mod:`speechpipe.telemetry.attribution`, the page in
:mod:`speechpipe.telemetry.report`. docs/evaluation.md documents the method and eval.json.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from speechpipe.pipeline.config import Config, ConfigError, parse_override
from speechpipe.pipeline.offline import find_inputs, read_reference, transcribe_file
from speechpipe.pipeline.outputs import atomic_write_text
from speechpipe.pipeline.session import AsrJob, AsrRun, SessionHooks, StreamSession
from speechpipe.stages.align import ForcedAligner
from speechpipe.stages.asr import AsrConfig, AsrEngine, Transcript
from speechpipe.stages.audio import AudioError, load_audio
from speechpipe.stages.vad import SpeechDiscarded, SpeechSegment
from speechpipe.telemetry import evaluation as ev
from speechpipe.telemetry import names as n
from speechpipe.telemetry.attribution import (
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
from speechpipe.telemetry.vad_metrics import read_segments
from speechpipe.telemetry.wer import normalized_words, score

SCHEMA = "speechpipe.eval/1"
#: bump when the reference-timing method changes, so cached timings are recomputed.
TIMING_VERSION = 3
SAMPLE_RATE = 16000


class EvalError(ValueError):
    """A variant, sweep or dataset that cannot be evaluated; the message says which."""


# ------------------------------------------------------------------------------- variants


@dataclass
class Variant:
    """A named pipeline configuration; ``params`` are the swept keys for a sweep combination."""

    name: str
    config: Config
    params: dict[str, Any] | None = None


def variant_from_arg(text: str, base: Config) -> Variant:
    """``NAME=CONFIG.toml`` (the file applied on top of ``base``) or ``NAME`` (``base`` itself)."""
    name, sep, path = text.partition("=")
    name = name.strip()
    if not name:
        raise EvalError(f"--variant {text!r}: expected NAME=CONFIG.toml or NAME")
    config = base
    if sep:
        try:
            config = base.with_file(path)
        except ConfigError as exc:
            raise EvalError(f"--variant {name}: {exc}") from None
    return Variant(name, config.with_overrides({"pipeline.variant": name}))


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``vad.hangover_ms=150,300,600`` -> ``("vad.hangover_ms", [150, 300, 600])``."""
    key, sep, raw = text.partition("=")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not sep or not key.strip() or not values:
        raise EvalError(f"--sweep {text!r}: expected TABLE.KEY=V1,V2,...")
    return key.strip(), [parse_override(f"{key.strip()}={v}")[1] for v in values]


def expand_sweep(base: Config, sweeps: Sequence[str]) -> list[Variant]:
    """The cartesian product of the swept values, one variant per combination, named
    ``key=value,key=value`` (short keys)."""
    specs = [parse_sweep(s) for s in sweeps]
    keys = [k for k, _ in specs]
    if len(set(keys)) != len(keys):
        raise EvalError("--sweep: the same key is swept twice")
    short = [k.split(".", 1)[1] if "." in k else k for k in keys]
    if len(set(short)) != len(short):
        short = keys
    out = []
    for combo in itertools.product(*(vals for _, vals in specs)):
        params = dict(zip(keys, combo))
        name = ",".join(f"{s}={v}" for s, v in zip(short, combo))
        try:
            config = base.with_overrides({**params, "pipeline.variant": name})
        except ConfigError as exc:
            raise EvalError(f"--sweep {name}: {exc}") from None
        out.append(Variant(name, config, params))
    return out


# ------------------------------------------------------------------------------- datasets


@dataclass
class DatasetItem:
    """One audio file of a dataset, with what is known about it."""

    file_id: str
    path: Path
    reference: str | None
    labels: list[tuple[float, float]] | None


def discover(datasets: Iterable[str | Path]) -> tuple[list[DatasetItem], list[dict]]:
    """Audio files of the datasets (folders recursively, or single files), their ``.txt``
    references and ``<id>.segments.txt`` labels. File ids are ``<folder name>/<relative path>``."""
    items: list[DatasetItem] = []
    failures: list[dict] = []
    seen: set[str] = set()
    for ds in datasets:
        inputs, missing = find_inputs([ds])
        failures += [{"file": f.file, "error": f.error} for f in missing]
        for inp in inputs:
            root = Path(inp.root)
            rel = inp.path.relative_to(root).as_posix()
            file_id = f"{root.resolve().name}/{rel}" if Path(ds).is_dir() else rel
            if file_id in seen:
                continue
            seen.add(file_id)
            labels_path = inp.path.with_suffix(".segments.txt")
            labels = None
            if labels_path.is_file():
                try:
                    labels = read_segments(labels_path)
                except ValueError as exc:
                    failures.append({"file": str(labels_path), "error": str(exc)})
                    continue
            items.append(DatasetItem(file_id, inp.path, read_reference(inp), labels))
    return items, failures


# ------------------------------------------------------------------------------- session observer


class ChainedHooks(SessionHooks):
    """Forwards every session callback to several observers, in order."""

    def __init__(self, *hooks: SessionHooks | None) -> None:
        self.hooks = [h for h in hooks if h is not None]

    def stream_started(self, session):
        for h in self.hooks:
            h.stream_started(session)

    def vad_event(self, session, event):
        for h in self.hooks:
            h.vad_event(session, event)

    def asr_completed(self, session, job, transcripts, run):
        for h in self.hooks:
            h.asr_completed(session, job, transcripts, run)

    def final(self, session, segment, transcript):
        for h in self.hooks:
            h.final(session, segment, transcript)

    def stream_ended(self, session):
        for h in self.hooks:
            h.stream_ended(session)


class EvalCollector(SessionHooks):
    """Records what the evaluation needs from one stream: segments, discards, ASR runs, finals."""

    def __init__(self) -> None:
        self.segments: list[SpeechSegment] = []
        self.discarded = 0
        self.finals: dict[int, Transcript] = {}
        self.asr_wall_s = 0.0
        self.asr_calls = 0
        self.speech_frames = 0
        self.total_frames = 0
        self.vad_config_id = ""

    def vad_event(self, session: StreamSession, event) -> None:
        if isinstance(event, SpeechSegment):
            self.segments.append(event)
        elif isinstance(event, SpeechDiscarded):
            self.discarded += 1

    def asr_completed(
        self, session: StreamSession, job: AsrJob, transcripts: list[Transcript], run: AsrRun | None
    ) -> None:
        if run is not None:
            self.asr_wall_s += run.wall_s
            self.asr_calls += len(run.windows)

    def final(self, session: StreamSession, segment: SpeechSegment, transcript: Transcript) -> None:
        self.finals[segment.index] = transcript

    def stream_ended(self, session: StreamSession) -> None:
        self.speech_frames = session.vad.speech_frames
        self.total_frames = session.vad.total_frames
        self.vad_config_id = session.vad_config_id

    def file_run(self, file_id: str, duration: float, text: str) -> ev.FileRun:
        segs, words = [], []
        for s in sorted(self.segments, key=lambda s: s.start_sample):
            tr = self.finals.get(s.index)
            segs.append(
                ev.SegmentInfo(s.index, s.start_s, s.end_s, s.end_reason, s.speech_ratio, tr.text if tr else "")
            )
            if tr is not None:
                words += [RawWord(w.word, w.start, w.end, s.index) for w in tr.words]
        return ev.FileRun(
            file=file_id,
            duration=duration,
            text=text,
            segments=segs,
            words=words,
            discarded=self.discarded,
            speech_frames=self.speech_frames,
            total_frames=self.total_frames,
            asr_wall_s=self.asr_wall_s,
            asr_calls=self.asr_calls,
            hallucination_drops=sum(t.dropped for t in self.finals.values()),
            vad_config_id=self.vad_config_id,
        )


# ------------------------------------------------------------------------------- reference timing


def _forced_text(reference: str) -> str:
    # All-caps references (LibriSpeech) are lowercased: Whisper rarely saw shouted text, and its
    # attention aligns ordinary casing more tightly. Scoring is case-insensitive either way.
    return reference.lower() if reference.isupper() else reference


class ReferenceTimer:
    """Times reference words on the unsegmented audio (see :mod:`speechpipe.telemetry.attribution`),
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
        (:func:`~speechpipe.telemetry.attribution.edge_errors`)."""

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


# ------------------------------------------------------------------------------- the run


@dataclass
class EvalOptions:
    """Settings of an evaluation run."""

    tolerance: float = BOUNDARY_TOLERANCE_S
    baseline: str | None = None
    cache_dir: Path | None = None
    report: bool = True
    timelines: int = 6
    run_id: str | None = None
    #: time the transcripts of labelled files without a reference too, to measure the timing
    #: method against the human labels (one extra whole-file transcription per such file, cached).
    label_check: bool = True


@dataclass
class EvalResult:
    """The eval.json document and where it was written."""

    doc: dict
    out_dir: Path
    failed: list[dict] = field(default_factory=list)

    @property
    def json_path(self) -> Path:
        return self.out_dir / "eval.json"

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.html"


def _engine_cache(factory: Callable[[AsrConfig], AsrEngine] | None) -> Callable[[AsrConfig], AsrEngine]:
    engines: dict[AsrConfig, AsrEngine] = {}

    def get(cfg: AsrConfig) -> AsrEngine:
        if cfg not in engines:
            engines[cfg] = factory(cfg) if factory else AsrEngine(cfg)
        return engines[cfg]

    return get


def evaluate(
    datasets: Sequence[str | Path],
    variants: Sequence[Variant],
    out_dir: str | Path,
    *,
    options: EvalOptions | None = None,
    engine_factory: Callable[[AsrConfig], AsrEngine] | None = None,
    instrumentation=None,
    hooks_factory: Callable[[Variant, DatasetItem], SessionHooks | None] | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Run every variant over every file of ``datasets``; write ``eval.json`` (and ``report.html``).

    ``engine_factory`` builds the ASR engine for an ASR config (one per distinct config; by
    default ``AsrEngine(config)``). With an ``instrumentation``
    (:class:`speechpipe.telemetry.instrument.Instrumentation`) each file of each variant runs
    inside an ``eval.utterance`` span carrying the run id, the variant, its VAD config id and,
    once scored, the file's WER and error causes; the pipeline's own ``stream`` span of the file
    (with all its segment and ASR spans) is its child and carries the run id too, and every metric
    point carries the variant and VAD config id. ``hooks_factory`` adds further session observers.
    """
    opts = options or EvalOptions()
    log = log or (lambda msg: None)
    if not variants:
        raise EvalError("no variants to evaluate")
    if not opts.tolerance >= 0:
        raise EvalError(f"--tolerance must be a non-negative number of seconds, not {opts.tolerance}")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise EvalError(f"variant names must be unique: {names}")
    baseline = opts.baseline or names[0]
    if baseline not in names:
        raise EvalError(f"--baseline {baseline!r} is not a variant ({', '.join(names)})")
    # The baseline runs first, so that later variants can record their WER change on their spans.
    variants = sorted(variants, key=lambda v: v.name != baseline)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_id = opts.run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    t_start = time.perf_counter()

    items, failures = discover(datasets)
    if not items:
        raise EvalError("no audio files found in " + ", ".join(map(str, datasets)))
    engines = _engine_cache(engine_factory)
    tracer = instrumentation.tracer if instrumentation is not None else None

    # Reference timing: once per file with a reference, on the baseline's model.
    timer = ReferenceTimer(engines(variants[0].config.asr), opts.cache_dir or out / "cache" / "ref_timing")
    truths: dict[str, ev.FileTruth] = {}
    timings: dict[str, dict] = {}
    label_checks: dict[str, dict] = {}
    envelopes: dict[str, list[float]] = {}
    usable: list[DatasetItem] = []
    for k, item in enumerate(items, 1):
        try:
            audio, _info = load_audio(item.path)
        except (AudioError, sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
            failures.append({"file": item.file_id, "error": str(exc) or type(exc).__name__})
            log(f"error: {item.file_id}: {exc}")
            continue
        duration = audio.size / SAMPLE_RATE
        truth = ev.FileTruth(item.file_id, duration, item.reference, item.labels)
        envelopes[item.file_id] = _envelope(audio)
        if item.reference is not None and normalized_words(item.reference):
            doc = timer.timing(item.path, item.reference, audio)
            timings[item.file_id] = doc
            truth.ref_words = _timed(doc)
            log(f"reference timing {k}/{len(items)}: {item.file_id} ({doc['method']})")
            if item.labels is not None:
                label_checks[item.file_id] = edge_errors(truth.ref_words, item.labels)
        elif item.labels and opts.label_check:
            label_checks[item.file_id] = timer.label_check(item.path, item.labels, audio)
            log(f"timing check against labels {k}/{len(items)}: {item.file_id}")
        truths[item.file_id] = truth
        usable.append(item)

    summaries: dict[str, dict] = {}
    all_failed = list(failures)
    for v_i, variant in enumerate(variants, 1):
        engine = engines(variant.config.asr)
        inst = _variant_instrumentation(instrumentation, variant)
        rows, runs, vtruths, vfailed = [], [], [], []
        base_rows = {r["file"]: r for r in summaries[baseline]["per_file"]} if baseline in summaries else {}
        for item in usable:
            truth = truths[item.file_id]
            span_cm = _span(tracer, run_id, variant, item)
            with span_cm as span:
                collector = EvalCollector()
                extra = hooks_factory(variant, item) if hooks_factory else None
                stream_hooks = None
                if inst is not None:
                    from opentelemetry import context

                    stream_hooks = inst.stream_hooks(
                        file=item.file_id, attributes={n.EVAL_RUN_ID: run_id}, parent=context.get_current()
                    )
                try:
                    result = transcribe_file(
                        item.path,
                        variant.config,
                        engine,
                        hooks=ChainedHooks(collector, stream_hooks, extra),
                        reference=item.reference,
                        stream_id=f"{variant.name}/{item.file_id}",
                    )
                except (AudioError, sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
                    vfailed.append({"file": item.file_id, "error": str(exc) or type(exc).__name__})
                    log(f"error: [{variant.name}] {item.file_id}: {exc}")
                    continue
                run = collector.file_run(item.file_id, truth.duration, result.text)
                row = ev.evaluate_file(run, truth, opts.tolerance)
                if span is not None:
                    _annotate(span, row, variant, base_rows.get(item.file_id), baseline)
            rows.append(row)
            runs.append(run)
            vtruths.append(truth)
            wer = f" WER {_pct(row['wer']['wer'])}" if row["wer"] else ""
            log(f"[{variant.name} {len(rows) + len(vfailed)}/{len(usable)}] {item.file_id}{wer}")
        summary = ev.summarize_variant(
            ev.VariantInput(variant.name, rows, runs, vtruths, variant.config.to_dict(), variant.params, vfailed)
        )
        summaries[variant.name] = summary
        all_failed += [{"variant": variant.name, **f} for f in vfailed]
        log(f"variant {v_i}/{len(variants)} {variant.name}: WER {_pct(summary['wer'])}, errors {summary['errors']}")

    base = summaries[baseline]
    comparisons = [ev.compare_variants(base, s, truths) for name, s in summaries.items() if name != baseline]
    unsegmented = _unsegmented(timings, truths)
    doc = {
        "schema": SCHEMA,
        "run_id": run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "datasets": [str(d) for d in datasets],
        "files": len(usable),
        "failed": all_failed,
        "settings": {
            "boundary_tolerance_s": opts.tolerance,
            "clip_min_s": ev.CLIP_MIN_S,
            "reference_timing": {
                "model": timer.engine.model_name,
                "beam_size": timer.engine.config.beam_size,
                "version": TIMING_VERSION,
                "computed": timer.computed,
                "cached": timer.cached,
            },
        },
        "baseline": baseline,
        "variants": {name: summaries[name] for name in names},
        "unsegmented": unsegmented,
        "comparisons": comparisons,
        "sweep": {
            "keys": sorted({k for v in variants if v.params for k in v.params}),
            "rows": ev.sweep_rows([summaries[n] for n in names]),
        },
        "reference_timing": {
            **timing_summary(timings),
            "label_check": label_check_summary(label_checks, opts.tolerance),
        },
        "wall_s": round(time.perf_counter() - t_start, 2),
    }
    atomic_write_text(out / "eval.json", json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    if opts.report:
        from speechpipe.telemetry.report import render_report

        atomic_write_text(
            out / "report.html", render_report(doc, truths=truths, envelopes=envelopes, timelines=opts.timelines)
        )
    return EvalResult(doc, out, all_failed)


def _unsegmented(timings: dict[str, dict], truths: dict[str, ev.FileTruth]) -> dict | None:
    """WER of the whole-file transcription (no VAD at all), from the reference-timing pass."""
    if not timings:
        return None
    from speechpipe.telemetry.wer import score_corpus

    pairs = [(truths[f].reference, d["transcript"]) for f, d in timings.items()]
    w = score_corpus(pairs)
    return {
        "files": len(pairs),
        "wer": round(w.wer, 4),
        "substitutions": w.substitutions,
        "deletions": w.deletions,
        "insertions": w.insertions,
        "ref_words": w.ref_words,
    }


def _variant_instrumentation(instrumentation, variant: Variant):
    """The run's instrumentation labelled for one variant: a shallow copy sharing the providers and
    the instruments (registering them again would duplicate them), with the variant's name, VAD
    config id and model."""
    if instrumentation is None:
        return None
    inst = copy.copy(instrumentation)
    inst.variant = variant.name
    inst.vad_config_id = variant.config.vad.config_id
    inst.asr_model = variant.config.asr.model
    return inst


def _envelope(audio: np.ndarray, points_per_s: int = 50) -> list[float]:
    """Peak envelope of the audio for timeline plots (``points_per_s`` values per second)."""
    hop = SAMPLE_RATE // points_per_s
    n = audio.size // hop
    if n == 0:
        return []
    return [round(float(x), 4) for x in np.abs(audio[: n * hop]).reshape(n, hop).max(axis=1)]


class _NoSpan:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _span(tracer, run_id: str, variant: Variant, item: DatasetItem):
    if tracer is None:
        return _NoSpan()
    from opentelemetry import context

    # A new trace per file and variant: the root of the file's stream span tree.
    return tracer.start_as_current_span(
        n.SPAN_EVAL_UTTERANCE,
        context=context.Context(),
        attributes={
            n.EVAL_RUN_ID: run_id,
            n.PIPELINE_VARIANT: variant.name,
            n.VAD_CONFIG_ID: variant.config.vad.config_id,
            n.FILE: item.file_id,
        },
    )


def _annotate(span, row: dict, variant: Variant, base_row: dict | None, baseline: str) -> None:
    """Put the file's scores on its ``eval.utterance`` span."""
    span.set_attribute(n.EVAL_SEGMENTS, row["vad"]["segments"])
    if row["wer"] is None:
        return
    span.set_attribute(n.EVAL_WER, row["wer"]["wer"])
    span.set_attribute(n.EVAL_REF_WORDS, row["wer"]["ref_words"])
    if row["errors"]:
        span.set_attribute(n.EVAL_ERRORS_VAD_DROPPED, row["errors"]["vad_dropped"])
        span.set_attribute(n.EVAL_ERRORS_BOUNDARY, row["errors"]["boundary"])
        span.set_attribute(n.EVAL_ERRORS_ASR, row["errors"]["asr"])
    if base_row is not None and base_row["wer"] is not None and variant.name != baseline:
        delta = row["wer"]["wer"] - base_row["wer"]["wer"]
        span.set_attribute(n.EVAL_BASELINE, baseline)
        span.set_attribute(n.EVAL_WER_DELTA, round(delta, 4))
        span.set_attribute(n.EVAL_WORSE, delta > 0)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.2f}%"


# ------------------------------------------------------------------------------- command line


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
        help="a pipeline variant: NAME=CONFIG.toml (applied on top of the base settings) or NAME for the base settings; repeatable",
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
    g = p.add_argument_group("base settings (every variant starts from these)")
    g.add_argument("--config", metavar="TOML", help="base config file")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="set a base config key (repeatable)",
    )
    g.add_argument("--model", help="faster-whisper model name or directory")
    g.add_argument("--threads", type=int, help="CPU threads for the model")
    from speechpipe.pipeline.cli import add_telemetry_arguments

    add_telemetry_arguments(p)


def run_cli(args) -> int:
    """Entry point of ``speechpipe eval`` (returns the exit code)."""
    from speechpipe.pipeline.cli import start_telemetry, telemetry_overrides
    from speechpipe.pipeline.config import load_config

    overrides: dict[str, Any] = dict(parse_override(t) for t in args.overrides)
    if args.model:
        overrides["asr.model"] = args.model
    if args.threads is not None:
        overrides["asr.threads"] = args.threads
    overrides.update({k: v for k, v in telemetry_overrides(args).items() if v is not None})
    base = load_config(args.config, overrides)
    telemetry = None
    try:
        variants = [variant_from_arg(v, base) for v in args.variants]
        variants += expand_sweep(base, args.sweep) if args.sweep else []
        if not variants:
            variants = [Variant("default", base.with_overrides({"pipeline.variant": "default"}))]
        opts = EvalOptions(
            tolerance=args.tolerance,
            baseline=args.baseline,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            report=not args.no_report,
            timelines=args.timelines,
        )
        telemetry = start_telemetry(base, mode="offline")
        result = evaluate(
            args.datasets,
            variants,
            args.output,
            options=opts,
            instrumentation=telemetry.instrumentation,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except EvalError as exc:
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
    """The variant table on stdout."""
    w = max([len(n) for n in doc["variants"]] + [21])
    print(
        f"{'variant':{w}s} {'WER':>7s} {'S':>4s} {'D':>4s} {'I':>4s} {'vad_drop':>8s} {'boundary':>8s} {'asr':>5s} "
        f"{'VAD F1':>6s} {'segs':>5s} {'ASR audio s':>11s} {'ASR s/s':>7s}"
    )
    for name, v in doc["variants"].items():
        e = v["errors"]
        f1 = "-" if v["vad"]["f1"] is None else f"{v['vad']['f1']:.3f}"
        print(
            f"{name:{w}s} {_pct(v['wer']):>7s} {v['substitutions']:4d} {v['deletions']:4d} {v['insertions']:4d} "
            f"{e['vad_dropped']:8d} {e['boundary']:8d} {e['asr']:5d} {f1:>6s} {v['vad']['segments']:5d} "
            f"{v['asr_audio_s']:11.1f} {v['asr_s_per_audio_s']:7.3f}"
        )
    if doc.get("unsegmented"):
        u = doc["unsegmented"]
        print(
            f"{'(whole files, no VAD)':{w}s} {_pct(u['wer']):>7s} {u['substitutions']:4d} {u['deletions']:4d} {u['insertions']:4d}"
        )
    for c in doc["comparisons"]:
        if c["new_errors"] is None or not any(c["new_errors"].values()) and not any(c["fixed_errors"].values()):
            continue
        ne, fe = c["new_errors"], c["fixed_errors"]
        print(
            f"{c['variant']} vs {c['baseline']}: WER {'+' if (c['wer_delta'] or 0) >= 0 else ''}{_pct(c['wer_delta'])}; "
            f"new errors {sum(ne.values())} (vad_dropped {ne['vad_dropped']}, boundary {ne['boundary']}, asr {ne['asr']}), "
            f"gone {sum(fe.values())} (vad_dropped {fe['vad_dropped']}, boundary {fe['boundary']}, asr {fe['asr']})"
        )
