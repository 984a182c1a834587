"""``speechpipe eval``: run pipeline variants over labelled datasets and explain the differences.

Every variant runs every file through :func:`speechpipe.pipeline.offline.runner.transcribe_file`, the same
:class:`~speechpipe.pipeline.session.StreamSession` path as ``speechpipe transcribe`` and the live
server; a session observer (:class:`EvalCollector`) records the VAD segments, the ASR runs and the
final transcripts. Reference word times come from a pass over the unsegmented audio that is the
same for all variants, so it runs once per file and is cached on disk
(:class:`ReferenceTimer`). The figures themselves are computed in
:mod:`speechpipe.pipeline.evaluate.quality.evaluation` and :mod:`speechpipe.pipeline.evaluate.quality.attribution`, the page in
:mod:`speechpipe.pipeline.evaluate.report.page`. docs/evaluation.md documents the method and eval.json.
With a baseline profile (``--calibration``) each variant's WER is also estimated without its
references, as the live drift monitor estimates it (:func:`load_calibrations`).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from opentelemetry import context

from speechpipe.pipeline.evaluate.collector import EvalCollector
from speechpipe.pipeline.evaluate.datasets import DatasetItem, discover
from speechpipe.pipeline.evaluate.quality import evaluation as ev
from speechpipe.pipeline.evaluate.quality.comparison import compare_variants
from speechpipe.pipeline.evaluate.quality.word_timing import BOUNDARY_TOLERANCE_S
from speechpipe.pipeline.evaluate.reference_timing import (
    TIMING_VERSION,
    ReferenceTimer,
    ReferenceTruths,
    label_check_summary,
    reference_truths,
    timing_summary,
)
from speechpipe.pipeline.hooks import Observer
from speechpipe.pipeline.monitoring.quality import Calibration, load_calibration
from speechpipe.pipeline.observability import labels_for
from speechpipe.pipeline.offline.outputs import atomic_write_text
from speechpipe.pipeline.offline.runner import FILE_ERRORS, transcribe_file
from speechpipe.pipeline.variants import Variant
from speechpipe.stages.asr import AsrConfig, AsrEngine, load_checked
from speechpipe.telemetry import names as n
from speechpipe.telemetry.instruments import Instrumentation

if TYPE_CHECKING:
    from speechpipe.pipeline.offline.ray_runner import RayPool

SCHEMA = "speechpipe.eval/1"


class EvalError(ValueError):
    """A set of variants or a dataset that cannot be evaluated; the message says which (a variant
    that cannot be built is a :class:`~speechpipe.pipeline.config.ConfigError`)."""


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
    #: a baseline profile (``speechpipe baseline build``): estimate each variant's WER without its
    #: references too, with that profile's calibration (:func:`load_calibrations`)
    calibration: str | Path | None = None


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
            engines[cfg] = factory(cfg) if factory else AsrEngine(cfg, model=load_checked(cfg))
        return engines[cfg]

    return get


@dataclass
class _Run:
    """An evaluation run under way: its settings, the files it can use and what it found so far."""

    run_id: str
    opts: EvalOptions
    baseline: str
    engines: Callable[[AsrConfig], AsrEngine]
    instrumentation: Instrumentation | None
    observers_factory: Callable[[Variant, DatasetItem], Iterable[Observer | None]] | None
    log: Callable[[str], None]
    summaries: dict[str, dict] = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)
    pool: RayPool | None = None
    #: the estimated WER's calibration of each variant (empty without ``--calibration``)
    calibrations: dict[str, Calibration] = field(default_factory=dict)


def evaluate(
    datasets: Sequence[str | Path],
    variants: Sequence[Variant],
    out_dir: str | Path,
    *,
    options: EvalOptions | None = None,
    engine_factory: Callable[[AsrConfig], AsrEngine] | None = None,
    instrumentation: Instrumentation | None = None,
    observers_factory: Callable[[Variant, DatasetItem], Iterable[Observer | None]] | None = None,
    log: Callable[[str], None] | None = None,
    pool: RayPool | None = None,
) -> EvalResult:
    """Run every variant over every file of ``datasets``; write ``eval.json`` (and ``report.html``).

    ``engine_factory`` builds the ASR engine for an ASR config (one per distinct config; by
    default the config's model, a failed load raising :class:`~speechpipe.stages.asr.ModelLoadError`,
    which stops the run). With an ``instrumentation`` each file of each variant runs
    inside an ``eval.utterance`` span carrying the run id, the variant, its VAD config id and,
    once scored, the file's WER and error causes; the pipeline's own ``stream`` span of the file
    (with all its segment and ASR spans) is its child and carries the run id too, and every metric
    point carries the variant and VAD config id. ``observers_factory`` adds further observers of
    each file's session. With a ``pool`` (an entered :class:`~speechpipe.pipeline.offline.ray_runner.RayPool`)
    the reference timings and the variants' files run on Ray actors
    (:mod:`~speechpipe.pipeline.evaluate.ray_eval`), the figures are the same. With
    ``options.calibration`` each variant also gets its WER estimated without references
    (``estimated``), checked before anything runs (:func:`load_calibrations`).
    """
    opts = options or EvalOptions()
    baseline = _check(variants, opts)
    calibrations = load_calibrations(opts.calibration, [v.name for v in variants]) if opts.calibration else {}
    # The baseline runs first, so that later variants can record their WER change on their spans.
    ordered = sorted(variants, key=lambda v: v.name != baseline)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    items, failures = discover(datasets)
    if not items:
        raise EvalError("no audio files found in " + ", ".join(map(str, datasets)))
    run = _Run(
        run_id=opts.run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6],
        opts=opts,
        baseline=baseline,
        engines=_engine_cache(engine_factory),
        instrumentation=instrumentation,
        observers_factory=observers_factory,
        log=log or (lambda msg: None),
        failed=failures,
        pool=pool,
        calibrations=calibrations,
    )
    # Reference timing: once per file with a reference, on the baseline's model.
    timer = ReferenceTimer(run.engines(ordered[0].config.asr), opts.cache_dir or out / "cache" / "ref_timing")
    if pool is not None:
        from speechpipe.pipeline.evaluate import ray_eval

        ray_eval.prefill_timings(pool, items, timer, ordered[0].config, run.log)
    truth = reference_truths(items, timer, opts.label_check, run.log, run.failed)
    for v_i, variant in enumerate(ordered, 1):
        summary = _run_variant(run, variant, truth)
        run.summaries[variant.name] = summary
        est = summary.get("estimated")
        estimated = f", estimated {estimated_text(est)}" if est else ""
        run.log(
            f"variant {v_i}/{len(ordered)} {variant.name}: WER {pct(summary['wer'])}{estimated}, errors {summary['errors']}"
        )
    doc = _document(run, [v.name for v in variants], ordered, datasets, truth, timer)
    doc["wall_s"] = round(time.perf_counter() - t_start, 2)
    atomic_write_text(out / "eval.json", json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    if opts.report:
        from speechpipe.pipeline.evaluate.report.page import render_report

        page = render_report(doc, truths=truth.truths, envelopes=truth.envelopes, timelines=opts.timelines)
        atomic_write_text(out / "report.html", page)
    return EvalResult(doc, out, run.failed)


def _check(variants: Sequence[Variant], opts: EvalOptions) -> str:
    """Refuse what cannot be evaluated; returns the baseline's name."""
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
    return baseline


def load_calibrations(path: str | Path, names: Sequence[str]) -> dict[str, Calibration]:
    """The estimated WER's calibration of each variant of ``names`` in the baseline profile at
    ``path``: the profile's variant of the same name, else its only variant
    (:func:`~speechpipe.pipeline.monitoring.quality.load_calibration`, the live monitor's rule),
    else its ``default`` one (the base config's name). :class:`EvalError` naming the file when it
    is not a profile or holds no calibration for a variant."""
    found: dict[str, Calibration] = {}
    for name in names:
        try:
            calibration = load_calibration(path, name) or load_calibration(path, "default")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            detail = str(exc) if str(exc).startswith(str(path)) else f"{path}: not a baseline profile: {exc!r}"
            raise EvalError(f"--calibration {detail}") from None
        if calibration is None:
            raise EvalError(
                f"--calibration {path}: no calibration of the estimated WER for variant {name!r} (a profile gets "
                "one when `speechpipe baseline build` ran over at least 3 files with a reference: a .txt beside each)"
            )
        found[name] = calibration
    return found


def _run_variant(run: _Run, variant: Variant, truth: ReferenceTruths) -> dict:
    """Every usable file through one variant; returns the variant's summary."""
    calibration = run.calibrations.get(variant.name)
    inst = run.instrumentation.labelled(labels_for(variant.config)) if run.instrumentation is not None else None
    rows, runs, vtruths, vfailed = [], [], [], []
    base_rows = {r["file"]: r for r in run.summaries[run.baseline]["per_file"]} if run.baseline in run.summaries else {}
    remote = None
    if run.pool is not None:
        from speechpipe.pipeline.evaluate import ray_eval

        remote = ray_eval.run_variant(run.pool, variant, truth.usable, truth.truths)
    for k, item in enumerate(truth.usable):
        file_truth = truth.truths[item.file_id]
        with _span(inst, run.run_id, variant, item) as span:
            if remote is not None:
                file_run, error = remote[k].file_run, remote[k].error
            else:
                file_run, error = _run_file(run, variant, item, file_truth.duration, inst)
            if file_run is None:
                vfailed.append({"file": item.file_id, "error": error})
                run.log(f"error: [{variant.name}] {item.file_id}: {error}")
                continue
            row = ev.evaluate_file(file_run, file_truth, run.opts.tolerance, calibration)
            if span is not None:
                _annotate(span, row, variant, base_rows.get(item.file_id), run.baseline)
        rows.append(row)
        runs.append(file_run)
        vtruths.append(file_truth)
        wer = f" WER {pct(row['wer']['wer'])}" if row["wer"] else ""
        run.log(f"[{variant.name} {len(rows) + len(vfailed)}/{len(truth.usable)}] {item.file_id}{wer}")
    run.failed += [{"variant": variant.name, **f} for f in vfailed]
    return ev.summarize_variant(
        ev.VariantInput(
            variant.name, rows, runs, vtruths, variant.config.to_dict(), variant.params, vfailed, calibration
        )
    )


def _run_file(
    run: _Run, variant: Variant, item: DatasetItem, duration: float, inst: Instrumentation | None
) -> tuple[ev.FileRun | None, str]:
    """One file through one variant here: what its collector saw, or why it failed."""
    collector = EvalCollector()
    observers = [collector, *(run.observers_factory(variant, item) if run.observers_factory else ())]
    if inst is not None:
        attributes = {n.EVAL_RUN_ID: run.run_id}
        observers.append(inst.stream_observer(file=item.file_id, attributes=attributes, parent=context.get_current()))
    engine = run.engines(variant.config.asr)  # a model that cannot load stops the run, not this file
    try:
        result = transcribe_file(
            item.path,
            variant.config,
            engine,
            observers=observers,
            reference=item.reference,
            stream_id=f"{variant.name}/{item.file_id}",
        )
    except FILE_ERRORS as exc:
        return None, str(exc) or type(exc).__name__
    return collector.file_run(item.file_id, duration, result.text), ""


def _document(
    run: _Run,
    names: list[str],
    variants: list[Variant],
    datasets: Sequence[str | Path],
    truth: ReferenceTruths,
    timer: ReferenceTimer,
) -> dict:
    """The eval.json document (see docs/evaluation.md)."""
    summaries = run.summaries
    base = summaries[run.baseline]
    return {
        "schema": SCHEMA,
        "run_id": run.run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "datasets": [str(d) for d in datasets],
        "files": len(truth.usable),
        "failed": run.failed,
        "settings": {
            "boundary_tolerance_s": run.opts.tolerance,
            "clip_min_s": ev.CLIP_MIN_S,
            "reference_timing": {
                "model": timer.engine.model_name,
                "beam_size": timer.engine.config.beam_size,
                "version": TIMING_VERSION,
                "computed": timer.computed,
                "cached": timer.cached,
            },
        },
        "baseline": run.baseline,
        "variants": {name: summaries[name] for name in names},
        "unsegmented": _unsegmented(truth.timings, truth.truths),
        "comparisons": [
            compare_variants(base, s, truth.truths) for name, s in summaries.items() if name != run.baseline
        ],
        "sweep": {
            "keys": sorted({k for v in variants if v.params for k in v.params}),
            "rows": ev.sweep_rows([summaries[name] for name in names]),
        },
        "reference_timing": {
            **timing_summary(truth.timings),
            "label_check": label_check_summary(truth.label_checks, run.opts.tolerance),
        },
    }


def _unsegmented(timings: dict[str, dict], truths: dict[str, ev.FileTruth]) -> dict | None:
    """WER of the whole-file transcription (no VAD at all), from the reference-timing pass."""
    if not timings:
        return None
    from speechpipe.pipeline.evaluate.quality.wer import score_corpus

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


def _span(inst: Instrumentation | None, run_id: str, variant: Variant, item: DatasetItem):
    if inst is None:
        return contextlib.nullcontext()
    # A new trace per file and variant: the root of the file's stream span tree.
    return inst.tracer.start_as_current_span(
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


def pct(x: float | None) -> str:
    """A rate as a percentage with two decimals (``n/a`` for None)."""
    return "n/a" if x is None else f"{x * 100:.2f}%"


def estimated_text(est: dict) -> str:
    """A variant's ``estimated`` figures as ``4.10% [2.5-5.7]`` (``n/a`` without an estimate)."""
    if est["estimated_wer"] is None:
        return "n/a"
    return f"{pct(est['estimated_wer'])} [{est['low'] * 100:.1f}-{est['high'] * 100:.1f}]"
