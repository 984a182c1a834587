"""Offline transcription of files and folders through the same :class:`StreamSession` as live.

Each file is decoded block by block at its native rate and fed to a session, exactly as a live
stream would be, only faster; the session packs its segments into windows of up to 30 s and the
jobs run inline on the shared engine. Results are written atomically per file (JSON last, so a
complete JSON marks a finished file and a rerun skips it), and a ``summary.json`` covers the whole
output folder.
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import soundfile as sf

from speechpipe.pipeline.config import Config, sized_for_cores
from speechpipe.pipeline.evaluate.quality import WerResult, score, score_corpus
from speechpipe.pipeline.hooks import FinalTranscript, Observer
from speechpipe.pipeline.offline.driver import drive
from speechpipe.pipeline.offline.outputs import FileResult, atomic_write_text, is_complete, output_path, write_outputs
from speechpipe.pipeline.offline.progress import FileProgress
from speechpipe.pipeline.session import StreamSession
from speechpipe.stages.asr import AsrEngine, ModelLoadError, load_checked
from speechpipe.stages.audio import AudioError, header, iter_file_blocks

#: extensions looked for in folders: whatever libsndfile decodes.
AUDIO_EXTENSIONS = frozenset("." + ext.lower() for ext in sf.available_formats()) | {".mp3", ".oga", ".opus"}
BLOCK_S = 5.0


@dataclass
class Failure:
    """A file that could not be transcribed, and why."""

    file: str
    error: str


class OutputError(OSError):
    """The run's output folder or its ``summary.json`` cannot be written (a full disk, no
    permission, a read-only file system): the run cannot report, so it ends with this one line.
    ``summary`` holds the totals so far when the files were run."""

    def __init__(self, message: str, summary: RunSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


def describe_os_error(exc: OSError) -> str:
    """``exc`` in one line: its cause in words and the symbolic errno (``ENOSPC``), without the
    path (the caller says which file it was)."""
    name = errno.errorcode.get(exc.errno or 0)
    cause = exc.strerror or str(exc) or type(exc).__name__
    return f"{cause} ({name})" if name else cause


@dataclass
class InputFile:
    """An audio file to transcribe and the root its output path is relative to."""

    path: Path
    root: Path

    @property
    def reference_path(self) -> Path:
        """``name.txt`` beside ``name.wav``: the reference transcript, when present."""
        return self.path.with_suffix(".txt")


@dataclass
class RunSummary:
    """Totals of a run over an output folder (written as ``summary.json``)."""

    files: int = 0
    transcribed: int = 0
    skipped: int = 0
    failed: list[Failure] = field(default_factory=list)
    audio_s: float = 0.0
    wall_s: float = 0.0
    asr_audio_s: float = 0.0
    segments: int = 0
    wer: WerResult | None = None
    vad_config_id: str = ""
    asr_model: str = ""
    variant: str = ""
    per_file: list[dict] = field(default_factory=list)
    #: final figures of the run's OpenTelemetry metrics (see speechpipe.telemetry.snapshot), when collected.
    metrics: dict | None = None

    @property
    def rtf(self) -> float:
        """Wall time per second of audio transcribed in this run."""
        return self.wall_s / self.audio_s if self.audio_s else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["failed"] = [asdict(f) for f in self.failed]
        d["wer"] = self.wer.to_dict() if self.wer else None
        d["rtf"] = round(self.rtf, 4)
        for key in ("audio_s", "wall_s", "asr_audio_s"):
            d[key] = round(d[key], 3)
        return d


def find_inputs(paths: Iterable[str | Path], exclude: Path | None = None) -> tuple[list[InputFile], list[Failure]]:
    """Expand files and folders (recursively, sorted) into audio files; missing paths are failures.

    Files under ``exclude`` (the output folder) are skipped, so an output folder inside an input
    folder is never read back as input.
    """
    found: list[InputFile] = []
    missing: list[Failure] = []
    exclude = exclude.resolve() if exclude else None
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file() or f.suffix.lower() not in AUDIO_EXTENSIONS:
                    continue
                if exclude and f.resolve().is_relative_to(exclude):
                    continue
                found.append(InputFile(f, p))
        elif p.is_file():
            found.append(InputFile(p, p.parent))
        else:
            missing.append(Failure(str(p), "no such file or directory"))
    return found, missing


#: what reading and transcribing one file can raise that is that file's failure (not decodable,
#: unreadable, truncated): the file is reported and the run goes on.
FILE_ERRORS = (AudioError, sf.LibsndfileError, RuntimeError, ValueError, OSError)


def load_engine(config: Config, background: bool = False) -> AsrEngine:
    """The shared engine for ``config.asr``; a model that cannot be loaded raises
    :class:`~speechpipe.stages.asr.ModelLoadError` (with ``background``: when the engine first needs the model, see :class:`AsrEngine`)."""
    if background:
        return AsrEngine(config.asr, background=True)
    return AsrEngine(config.asr, model=load_checked(config.asr))


def read_reference(item: InputFile) -> str | None:
    """The reference transcript beside the audio, or None."""
    ref = item.reference_path
    if ref.is_file():
        return " ".join(ref.read_text(encoding="utf-8", errors="replace").split())
    return None


def transcribe_file(
    path: Path,
    config: Config,
    engine: AsrEngine,
    *,
    observers: Iterable[Observer | None] = (),
    reference: str | None = None,
    stream_id: str | None = None,
    packed: bool = True,
    pool: Executor | None = None,
) -> FileResult:
    """Transcribe one file through a :class:`StreamSession` (raises :class:`AudioError`).

    The file is decoded once, block by block; its duration is the frames actually decoded (exact
    for MP3, whose header only estimates it). With ``packed`` False every segment is transcribed
    alone, as the live server does (the drift baseline needs the live path's confidences).
    With ``pool`` its windows run there while the file is still being read (see
    :func:`~speechpipe.pipeline.offline.driver.drive`).
    """
    t0 = time.perf_counter()
    info = header(path)
    session = StreamSession(
        config.vad,
        sample_rate=info.sample_rate,
        channels=info.channels,
        pack_s=engine.config.window_s if packed else 0.0,
        pack_gap_s=engine.config.gap_s,
        stream_id=stream_id or str(path),
        observers=observers,
    )
    finals: list[FinalTranscript] = []
    try:
        for event in drive(session, engine, iter_file_blocks(path, BLOCK_S), pool):
            if isinstance(event, FinalTranscript):
                finals.append(event)
    except BaseException as exc:
        session.abandon(error=exc)  # observers (telemetry) see the stream end, with its cause
        raise
    finals.sort(key=lambda f: f.segment.start_sample)
    segments = [f.transcript for f in finals if f.transcript.text]
    text = " ".join(s.text for s in segments)
    result = FileResult(
        file=str(path),
        duration=session.audio_s,
        text=text,
        segments=segments,
        sample_rate=info.sample_rate,
        channels=info.channels,
        vad_config_id=session.vad_config_id,
        asr_model=engine.model_name,
        reference=reference,
        wer=score(reference, text) if reference is not None else None,
        wall_s=time.perf_counter() - t0,
    )
    result.extra.update(
        {
            "variant": config.pipeline.variant,
            "vad_segments": len(finals),
            "asr_audio_s": round(sum(f.segment.duration_s for f in finals), 3),
            "speech_ratio": round(session.vad.speech_frames / session.vad.total_frames, 4)
            if session.vad.total_frames
            else 0.0,
            "hallucination_drops": sum(f.transcript.dropped for f in finals),
            "sanitized_samples": session.sanitized_samples,
        }
    )
    return result


#: transcribes inputs, yielding each with its result (or why it failed) as it completes, in any
#: order: in this process one after another (:func:`local_transcriber`), or on Ray actors
#: (:mod:`speechpipe.pipeline.offline.ray_runner`). ``started`` is told each input as it begins.
Transcriber = Callable[
    [list[InputFile], Callable[[InputFile], None]], Iterator[tuple[InputFile, "FileResult | Failure"]]
]


def run(
    paths: Iterable[str | Path],
    out_dir: str | Path,
    config: Config,
    *,
    engine: AsrEngine | None = None,
    force: bool = False,
    progress: bool | None = None,
    on_result: Callable[[FileResult], None] | None = None,
    on_failure: Callable[[Failure], None] | None = None,
    observers_factory: Callable[[InputFile], Iterable[Observer | None]] | None = None,
    metrics: Callable[[], dict] | None = None,
    transcriber: Transcriber | None = None,
) -> RunSummary:
    """Transcribe every input into ``out_dir`` and write ``summary.json``.

    A file whose complete JSON already exists is skipped unless ``force``; its figures still count
    in the summary. A file that fails is reported (``on_failure``, ``summary.failed``) and the run
    goes on, and so does a file whose outputs cannot be written (a full disk, no permission, a
    read-only file system; none of its outputs is left in place, see
    :func:`~speechpipe.pipeline.offline.outputs.write_outputs`). An output folder or a
    ``summary.json`` that cannot be written raises :class:`OutputError`. ``metrics``, when given, is called once at the end and its figures are written into
    ``summary.json`` under ``"metrics"``. ``transcriber`` runs the files (default: here, one after
    another, on ``engine``); whatever runs them, the outputs are written here, atomically.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out}: {describe_os_error(exc)}") from exc
    t_start = time.perf_counter()
    inputs, failures = find_inputs(paths, exclude=out)
    summary = RunSummary(files=len(inputs) + len(failures), failed=failures, variant=config.pipeline.variant)
    for f in failures:
        if on_failure:
            on_failure(f)
    summary.vad_config_id = config.vad.config_id
    summary.asr_model = config.asr.model
    pairs: list[tuple[str, str]] = []

    bar = FileProgress([item.path for item in inputs], enabled=progress)
    try:
        todo = []
        for item in inputs:
            json_path = output_path(item.path, item.root, out)
            if not force and is_complete(json_path):
                summary.skipped += 1
                _account(summary, pairs, json.loads(json_path.read_text(encoding="utf-8")))
                bar.advance(item.path)
            else:
                todo.append(item)
        run_all = transcriber or local_transcriber(config, engine, observers_factory)
        for item, result in run_all(todo, lambda started: bar.start(started.path)):
            if isinstance(result, Failure):
                summary.failed.append(result)
                if on_failure:
                    on_failure(result)
                bar.advance(item.path)
                continue
            result.extra["input_root"] = str(item.root)
            json_path = output_path(item.path, item.root, out)
            try:
                doc = write_outputs(result, json_path, formats=config.output.formats)
            except OSError as exc:  # this file's outputs, not the run: report it and go on
                failure = Failure(str(item.path), f"cannot write {json_path}: {describe_os_error(exc)}")
                summary.failed.append(failure)
                if on_failure:
                    on_failure(failure)
                bar.advance(item.path)
                continue
            summary.transcribed += 1
            _account(summary, pairs, doc)
            if on_result:
                on_result(result)
            bar.advance(item.path)
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - t_start
    summary.per_file.sort(key=lambda row: str(row.get("file")))  # files may finish in any order
    summary.wer = score_corpus(sorted(pairs)) if pairs else None
    if metrics is not None:
        summary.metrics = metrics()
    try:
        atomic_write_text(out / "summary.json", json.dumps(summary.to_dict(), indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {out / 'summary.json'}: {describe_os_error(exc)}", summary) from exc
    return summary


def local_transcriber(
    config: Config,
    engine: AsrEngine | None = None,
    observers_factory: Callable[[InputFile], Iterable[Observer | None]] | None = None,
    jobs: int = 1,
) -> Transcriber:
    """Files in this process on ``engine`` (loaded at the first file): one after another, or
    ``jobs`` at a time, each read, segmented and driven by a thread of its own while the windows
    of all of them run on a pool of ``asr.workers`` threads, one per CTranslate2 replica of the
    model (see :func:`~speechpipe.pipeline.offline.driver.drive`)."""

    def run_all(items: list[InputFile], started: Callable[[InputFile], None]):
        eng = engine
        if items and eng is None:  # loads while the first files are read and segmented
            eng = load_engine(config, background=True)
        workers = eng.config.workers if eng is not None else 1
        asr = ThreadPoolExecutor(workers, thread_name_prefix="asr") if workers > 1 else None

        def one(item: InputFile) -> FileResult | Failure:
            observers = observers_factory(item) if observers_factory else ()
            return transcribe_item(item, config, eng, observers, asr)

        try:
            yield from _run_files(items, started, one, jobs)
            if eng is not None:
                eng.wait_loaded()  # a model that failed to load is an error even if no file needed it
        finally:
            if asr is not None:
                asr.shutdown(cancel_futures=True)

    return run_all


def _run_files(items, started, one, jobs: int):
    """``one`` over ``items``, ``jobs`` at a time; each item with its outcome as it completes."""
    if jobs <= 1:
        for item in items:
            started(item)
            yield item, one(item)
        return
    with ThreadPoolExecutor(jobs, thread_name_prefix="transcribe") as pool:
        waiting = list(reversed(items))
        running = {}
        while waiting or running:
            while waiting and len(running) < jobs:
                item = waiting.pop()
                started(item)
                running[pool.submit(one, item)] = item
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                yield running.pop(fut), fut.result()


def parallel_config(config: Config, jobs: int = 0, cores: int | None = None) -> tuple[Config, int]:
    """``config`` sized for ``jobs`` files at a time (0: from the cores), each on its own model
    replica with the cores shared out, by the one rule of :func:`~speechpipe.pipeline.config.sized_for_cores`;
    ``asr.workers`` stays if it already asks for more replicas."""
    asr = sized_for_cores(config.asr, jobs, cores)
    return replace(config, asr=replace(asr, workers=max(config.asr.workers, asr.workers))), asr.workers


def transcribe_item(
    item: InputFile,
    config: Config,
    engine: AsrEngine,
    observers: Iterable[Observer | None] = (),
    pool: Executor | None = None,
) -> FileResult | Failure:
    """One input transcribed, or why it could not be (a corrupt file is a :class:`Failure`)."""
    try:
        ref = read_reference(item)
        return transcribe_file(item.path, config, engine, observers=observers, reference=ref, pool=pool)
    except ModelLoadError:
        raise  # not this file's fault: the run stops
    except FILE_ERRORS as exc:
        return Failure(str(item.path), _describe(exc))


def _account(summary: RunSummary, pairs: list[tuple[str, str]], data: dict) -> None:
    """Add one file's JSON to the run totals."""
    summary.audio_s += float(data.get("duration", 0.0))
    summary.segments += len(data.get("segments", []))
    summary.asr_audio_s += float(data.get("asr_audio_s", 0.0))
    row = {"file": data.get("file"), "duration": data.get("duration")}
    if data.get("reference") is not None:
        pairs.append((data["reference"], data.get("text", "")))
        row["wer"] = (data.get("wer") or {}).get("wer")
    summary.per_file.append(row)


def _describe(exc: BaseException) -> str:
    msg = str(exc) or type(exc).__name__
    return msg if isinstance(exc, AudioError) else f"{type(exc).__name__}: {msg}"
