"""Result files for one input file: JSON, plain text, SRT and WebVTT subtitles.

Outputs mirror the input tree: the input ``IN/sub/x.flac`` gives ``OUT/sub/x.flac.json`` (see
:func:`output_path`) with ``x.flac.txt``, ``x.flac.srt`` and ``x.flac.vtt`` next to it (those
asked for). The files of one input are written as one unit (each to a temporary name, then all
renamed, the JSON last; on a write error none lands, see :func:`write_together`): a JSON that
parses and says ``"complete": true`` (see :func:`is_complete`) means all the files of that input are in place, so an
interrupted batch run can skip the inputs already done.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import secrets
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from speechpipe.pipeline.config import OUTPUT_FORMATS
from speechpipe.pipeline.evaluate.quality import WerResult
from speechpipe.stages.asr import Transcript, Word

#: Subtitle layout: at most this many characters per cue line, lines per cue and seconds per cue.
CUE_LINE_CHARS = 42
CUE_LINES = 2
CUE_MAX_S = 7.0


@dataclass
class FileResult:
    """Everything the pipeline produced for one input file.

    ``file`` is the input path as given, ``duration`` its length in seconds, ``segments`` the
    transcripts in stream order. ``wer``/``reference`` are set when a reference transcript was
    scored. ``extra`` holds further top-level JSON fields added by later features.
    """

    file: str
    duration: float
    text: str
    segments: list[Transcript]
    sample_rate: int
    channels: int
    vad_config_id: str
    asr_model: str
    wer: WerResult | None = None
    reference: str | None = None
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------- JSON


def _t(seconds: float) -> float:
    return round(float(seconds), 3)


def _num(value: float, digits: int = 4) -> float | None:
    # NaN/inf are not JSON; write null instead.
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def _segment_dict(seg: Transcript) -> dict:
    return {
        "index": seg.index,
        "start": _t(seg.start),
        "end": _t(seg.end),
        "text": seg.text.strip(),
        "words": [
            {
                "start": _t(w.start),
                "end": _t(w.end),
                "word": w.word.strip(),
                "probability": _num(w.probability),
            }
            for w in seg.words
        ],
        "avg_logprob": _num(seg.avg_logprob),
        "no_speech_prob": _num(seg.no_speech_prob),
        "compression_ratio": _num(seg.compression_ratio),
        "dropped": seg.dropped,
    }


def to_json_dict(result: FileResult) -> dict:
    """The JSON document of ``result``.

    Times (``duration``, ``wall_s``, segment and word ``start``/``end``) are rounded to
    milliseconds, other floats to 4 decimals, non-finite floats become ``null``; words lose
    Whisper's leading space. ``wer`` and ``reference`` appear only when set. The keys of ``extra``
    are added at the top level and may not replace a standard key.
    """
    doc: dict = {
        "file": result.file,
        "duration": _t(result.duration),
        "text": result.text.strip(),
        "segments": [_segment_dict(s) for s in result.segments],
        "sample_rate": result.sample_rate,
        "channels": result.channels,
        "vad_config_id": result.vad_config_id,
        "asr_model": result.asr_model,
        "wall_s": _t(result.wall_s),
    }
    if result.wer is not None:
        doc["wer"] = result.wer.to_dict()
    if result.reference is not None:
        doc["reference"] = result.reference
    clash = (set(doc) | {"complete"}) & set(result.extra)
    if clash:
        raise ValueError(f"FileResult.extra may not replace standard keys: {sorted(clash)}")
    doc.update(result.extra)
    doc["complete"] = True
    return doc


def from_json_dict(doc: dict) -> FileResult:
    """Rebuild a :class:`FileResult` from :func:`to_json_dict` output (values as rounded there;
    words get their leading space back)."""
    known = {
        "file",
        "duration",
        "text",
        "segments",
        "sample_rate",
        "channels",
        "vad_config_id",
        "asr_model",
        "wall_s",
        "wer",
        "reference",
        "complete",
    }

    def _f(value: float | None) -> float:
        return math.nan if value is None else float(value)

    segments = [
        Transcript(
            index=s["index"],
            start=s["start"],
            end=s["end"],
            text=s["text"],
            words=[Word(w["start"], w["end"], " " + w["word"], _f(w["probability"])) for w in s["words"]],
            avg_logprob=_f(s["avg_logprob"]),
            no_speech_prob=_f(s["no_speech_prob"]),
            compression_ratio=_f(s["compression_ratio"]),
            dropped=s.get("dropped", 0),
        )
        for s in doc["segments"]
    ]
    return FileResult(
        file=doc["file"],
        duration=doc["duration"],
        text=doc["text"],
        segments=segments,
        sample_rate=doc["sample_rate"],
        channels=doc["channels"],
        vad_config_id=doc["vad_config_id"],
        asr_model=doc["asr_model"],
        wer=WerResult(**doc["wer"]) if doc.get("wer") is not None else None,
        reference=doc.get("reference"),
        wall_s=doc.get("wall_s", 0.0),
        extra={k: v for k, v in doc.items() if k not in known},
    )


# ---------------------------------------------------------------------------------- subtitles


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def srt_timestamp(seconds: float) -> str:
    """``HH:MM:SS,mmm`` (hours grow past two digits if need be)."""
    return _timestamp(seconds, ",")


def vtt_timestamp(seconds: float) -> str:
    """``HH:MM:SS.mmm``."""
    return _timestamp(seconds, ".")


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, CUE_LINE_CHARS, break_long_words=False, break_on_hyphens=False)


def _fits(text: str, duration: float) -> bool:
    return len(_wrap(text)) <= CUE_LINES and duration <= CUE_MAX_S


def _proportional_words(seg: Transcript) -> list[Word]:
    # A segment without word timings: spread its span over its words by character count.
    tokens = seg.text.split()
    total = sum(len(t) for t in tokens)
    words, t = [], seg.start
    for token in tokens:
        end = t + (seg.end - seg.start) * len(token) / total
        words.append(Word(t, end, " " + token, 1.0))
        t = end
    return words


def cues(segments: Sequence[Transcript]) -> list[tuple[float, float, str]]:
    """Subtitle cues ``(start, end, text)`` of ``segments``.

    Segments with empty text are skipped. A segment whose text does not fit in
    :data:`CUE_LINES` lines of :data:`CUE_LINE_CHARS` characters, or that lasts longer than
    :data:`CUE_MAX_S`, is split at word boundaries using the word timestamps (spread by character
    count when it has none). Cue text is wrapped into lines with ``\\n``.
    """
    out: list[tuple[float, float, str]] = []
    for seg in segments:
        text = " ".join(seg.text.split())
        if not text:
            continue
        if _fits(text, seg.end - seg.start):
            out.append((seg.start, seg.end, text))
            continue
        words = [w for w in seg.words if w.word.strip()] or _proportional_words(seg)
        groups: list[list[Word]] = []
        for w in words:
            if groups:
                candidate = groups[-1] + [w]
                if _fits(" ".join(x.word.strip() for x in candidate), w.end - candidate[0].start):
                    groups[-1] = candidate
                    continue
            groups.append([w])
        for i, group in enumerate(groups):
            # The first and last cue keep the segment's bounds, so splitting never shortens it.
            start = seg.start if i == 0 else group[0].start
            end = seg.end if i == len(groups) - 1 else group[-1].end
            out.append((start, max(start, end), " ".join(w.word.strip() for w in group)))
    return [(start, end, "\n".join(_wrap(text))) for start, end, text in out]


def srt(segments: Sequence[Transcript]) -> str:
    """SubRip subtitles: numbered cues from 1, separated by blank lines."""
    blocks = [
        f"{n}\n{srt_timestamp(start)} --> {srt_timestamp(end)}\n{text}\n"
        for n, (start, end, text) in enumerate(cues(segments), start=1)
    ]
    return "\n".join(blocks)


def vtt(segments: Sequence[Transcript]) -> str:
    """WebVTT subtitles (cue text escaped: ``&``, ``<`` and ``>`` are markup in WebVTT)."""
    blocks = ["WEBVTT\n"] + [
        f"{vtt_timestamp(start)} --> {vtt_timestamp(end)}\n{html.escape(text, quote=False)}\n"
        for start, end, text in cues(segments)
    ]
    return "\n".join(blocks)


def txt(result: FileResult) -> str:
    """The transcript, one line per non-empty segment (``result.text`` when there are no
    segments)."""
    lines = [" ".join(s.text.split()) for s in result.segments]
    lines = [line for line in lines if line]
    if not result.segments and result.text.strip():
        lines = [result.text.strip()]
    return "".join(line + "\n" for line in lines)


# ------------------------------------------------------------------------------------- files


def _temp_copy(path: Path, text: str | bytes) -> Path:
    """``text`` (UTF-8, or bytes as they are) written and fsynced to a new temporary file beside
    ``path``; its name. Parent directories are created. On error nothing is left behind and the error
    propagates (a full disk shows here, at the write or the fsync, never at the rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # os.open with mode 0o666 lets the umask decide permissions, as for a plain open().
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with open(fd, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _sync_dir(directory: Path) -> None:
    # Make renames durable; not every platform/filesystem allows fsync on a directory.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: a temporary file in the same directory,
    fsynced, then renamed over ``path``. Parent directories are created; on error the temporary
    file is removed and ``path`` is left as it was."""
    write_together([(Path(path), text)])


def write_together(files: Sequence[tuple[Path, str | bytes]]) -> None:
    """Write several files as one unit: each to a temporary name first (all of them, fsynced),
    then renamed into place in the order given (so the last one named, the JSON that marks a
    set complete, lands last). A file that cannot be written (a full disk, no permission, a
    read-only file system) leaves none of the set in place: every temporary is removed and the
    ``OSError`` propagates. Renames need no space, so once every temporary is written they only
    fail on a file system that breaks under us; then the temporaries and the files already
    renamed go too (the set is not half there)."""
    temps: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for path, text in files:
            temps.append((_temp_copy(path, text), path))
        while temps:
            tmp, path = temps[0]
            os.replace(tmp, path)
            temps.pop(0)
            placed.append(path)
    except BaseException:
        for leftover in [tmp for tmp, _path in temps] + placed:
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        raise
    for directory in dict.fromkeys(path.parent for path, _text in files):
        _sync_dir(directory)


def write_outputs(result: FileResult, json_path: Path, formats: Iterable[str] = OUTPUT_FORMATS) -> dict:
    """Write the side files named in ``formats`` (``"txt"``, ``"srt"``, ``"vtt"``; all by
    default) next to ``json_path`` (same name, other suffix), then the JSON, which is always
    written and marks the set complete; returns the JSON document. An existing JSON is removed
    first so that a rewrite interrupted half way is not taken for complete.

    The set lands as one unit (see :func:`write_together`): when one of them cannot be written
    (``OSError``: ENOSPC, EACCES, EROFS) none is put in place, so there is never a ``.txt``
    without its JSON from this call."""
    json_path = Path(json_path)
    if json_path.suffix != ".json":
        raise ValueError(f"output path must end in .json: {json_path}")
    formats = set(formats)
    unknown = formats - set(OUTPUT_FORMATS)
    if unknown:
        raise ValueError(f"unknown output format(s) {sorted(unknown)}, not in {OUTPUT_FORMATS}")
    doc = to_json_dict(result)  # before touching anything: it validates ``extra``
    json_path.unlink(missing_ok=True)
    files: list[tuple[Path, str]] = []
    if "txt" in formats:
        files.append((json_path.with_suffix(".txt"), txt(result)))
    if "srt" in formats:
        files.append((json_path.with_suffix(".srt"), srt(result.segments)))
    if "vtt" in formats:
        files.append((json_path.with_suffix(".vtt"), vtt(result.segments)))
    files.append((json_path, json.dumps(doc, ensure_ascii=False, indent=2) + "\n"))
    write_together(files)
    return doc


def is_complete(json_path: Path) -> bool:
    """Whether ``json_path`` exists, parses as a JSON object and has ``"complete": true``."""
    try:
        doc = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("complete") is True


def output_path(input_file: Path, input_root: Path, out_dir: Path) -> Path:
    """``out_dir/<input_file relative to input_root>.json``, the input's name kept whole
    (``IN/sub/x.flac`` -> ``OUT/sub/x.flac.json``). When the input was a single file
    (``input_root`` is that file, or any file) its root is its parent directory.

    Raises ``ValueError`` if ``input_file`` is not under ``input_root``.
    """
    # abspath, not resolve(): a symlink inside the input tree keeps its place in the output tree.
    file = Path(os.path.abspath(input_file))
    root = Path(os.path.abspath(input_root))
    if root == file or root.is_file():
        root = root.parent
    rel = file.relative_to(root)
    return Path(out_dir) / rel.parent / (rel.name + ".json")
