"""``speechpipe review export``'s input and output: the reviewed items read from the store, their
clips from the data directory, and the export's folder written as ``speechpipe transcribe``
writes its own: every file to a temporary name first, then renamed.

``DIR/export.json`` is the mark of a complete export: it is removed before anything else is
written and written last. Each split's ``metadata.jsonl`` is written after every file it names,
and a file an earlier export named that this one does not is removed only once the new manifests
are in place, so no manifest ever names a missing file, however the export is interrupted. A
re-run rewrites nothing that is already there and identical: a WAV or a ``.txt`` with the same
bytes is kept as it is.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
from sqlalchemy import and_, select
from sqlalchemy.engine import make_url

from speechpipe.pipeline.offline.outputs import atomic_write_text, write_together
from speechpipe.pipeline.review.export import SPLITS, ClipError, Entry, ExportOptions, Plan, Reviewed, cut, iso
from speechpipe.pipeline.review.schema import ai, items
from speechpipe.pipeline.review.store import DONE, ReviewStore
from speechpipe.stages.pcm import SAMPLE_RATE

MANIFEST = "metadata.jsonl"
SUMMARY = "export.json"
#: a temporary file left by an interrupted write (:func:`~speechpipe.pipeline.offline.outputs.write_together`).
_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


class ExportDirError(ValueError):
    """The output folder cannot hold an export (a file, or a folder of something else)."""


def read_reviewed(store: ReviewStore) -> list[Reviewed]:
    """Every reviewed item of the store, oldest review first, with its variant's transcript."""
    same = and_(ai.c.item == items.c.id, ai.c.variant == items.c.variant)
    q = (
        select(
            items.c.id,
            items.c.session,
            items.c.segment,
            items.c.variant,
            items.c.reason,
            items.c.start_s,
            items.c.end_s,
            items.c.text,
            ai.c.text.label("ai_text"),
            items.c.reviewer,
            items.c.done_at,
            items.c.audio,
            items.c.margin_before_s,
            items.c.margin_after_s,
            items.c.text_before,
            items.c.text_after,
        )
        .select_from(items.outerjoin(ai, same))
        .where(items.c.state == DONE)
        .order_by(items.c.done_at, items.c.id)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
    return [
        Reviewed(
            **(dict(r) | {"text": r["text"] or "", "reviewer": r["reviewer"] or "", "done_at": r["done_at"] or 0.0})
        )
        for r in rows
    ]


def clip_reader(data_dir: Path) -> Callable[[Reviewed], np.ndarray]:
    """Reads an item's clip from ``data_dir`` as int16 samples (what the FLAC holds, bit for
    bit); a missing or unreadable one raises :class:`~speechpipe.pipeline.review.export.ClipError`."""

    def read(row: Reviewed) -> np.ndarray:
        path = data_dir / (row.audio or "")
        if not path.is_file():
            raise ClipError("missing_audio", f"{path}: no such file")
        try:
            clip, rate = sf.read(path, dtype="int16", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
            raise ClipError("unreadable_audio", f"{path}: {exc}") from None
        if rate != SAMPLE_RATE or clip.shape[1] != 1:
            raise ClipError("unreadable_audio", f"{path}: {rate} Hz, {clip.shape[1]} channel(s), not 16 kHz mono")
        return clip[:, 0]

    return read


def check_output(out: Path) -> None:
    """Refuse an output path that is a file, or a folder with other things in it than an export
    (so that an export never mixes into, or cleans up, someone else's files)."""
    if out.exists() and not out.is_dir():
        raise ExportDirError(f"{out} is a file: give a folder for the export")
    looks_like_one = (out / SUMMARY).is_file() or any((out / s).is_dir() for s in SPLITS)
    if out.is_dir() and any(out.iterdir()) and not looks_like_one:
        raise ExportDirError(f"{out} is not empty and holds no export: give a new or empty folder")


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz mono PCM16 WAV of int16 ``samples``."""
    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _put(path: Path, data: bytes) -> bool:
    """``data`` at ``path`` unless the same bytes are there; whether it was written."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_together([(path, data)])
    return True


def _clean(folder: Path, keep: set[str], temps_only: bool = False) -> int:
    """Remove the temporaries an interrupted write left in ``folder``, and (unless
    ``temps_only``) its WAV and ``.txt`` files not in ``keep`` (an earlier export's, which this
    one does not name); with ``keep`` empty its manifest first, then the folder once empty.
    Returns how many files went."""
    if not folder.is_dir():
        return 0
    removed = 0
    if not temps_only and not keep and (folder / MANIFEST).is_file():
        (folder / MANIFEST).unlink()  # before any file it names
        removed += 1
    for f in folder.iterdir():
        stale = not temps_only and f.suffix in (".wav", ".txt") and f.name not in keep
        if f.is_file() and (_TEMP.match(f.name) or stale):
            f.unlink(missing_ok=True)
            removed += 1
    if not temps_only and not keep and not any(folder.iterdir()):
        folder.rmdir()
    return removed


def write_export(
    p: Plan,
    out: Path,
    read_clip: Callable[[Reviewed], np.ndarray],
    arguments: dict,
    now: float,
    on_written: Callable[[Entry], None] | None = None,
) -> dict:
    """Write the export ``p`` into ``out`` (checked with :func:`check_output` first) and return
    ``export.json``'s document. Each clip is read again and its segment must hold the samples
    the plan found (a clip deleted or replaced meanwhile is reported and left out, as in the
    plan). ``on_written`` is called after each segment's files are in place (tests interrupt
    the export there); ``arguments`` and ``now`` (Unix seconds) go into ``export.json``."""
    check_output(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).unlink(missing_ok=True)
    for s in SPLITS:
        _clean(out / s, set(), temps_only=True)
    written = reused = 0
    done: list[Entry] = []
    for e in p.entries:
        try:
            clip = read_clip(e.row)
            if cut(clip, e.row, p.margin_s) != e.cut:
                raise ClipError("changed_audio", f"item {e.row.id}: its clip changed since it was first read")
        except ClipError as exc:
            p.fail(e.row, exc)
            continue
        audio = e.cut.of(clip)
        folder = out / e.split
        txt = (e.record["text"] + "\n").encode("utf-8")
        changed = _put(folder / (Path(e.name).stem + ".txt"), txt)
        changed = _put(folder / e.name, wav_bytes(audio)) or changed
        written, reused = written + changed, reused + (not changed)
        done.append(e)
        if on_written is not None:
            on_written(e)
    p.entries = done
    removed = 0
    for s in SPLITS:
        lines = [e.record for e in done if e.split == s]
        if lines:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
            atomic_write_text(out / s / MANIFEST, text)
    for s in SPLITS:
        keep = {e.name for e in done if e.split == s}
        keep |= {Path(n).stem + ".txt" for n in keep}
        removed += _clean(out / s, keep)
    doc = summary(p, arguments, now) | {"files": {"written": written, "reused": reused, "removed": removed}}
    atomic_write_text(out / SUMMARY, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return doc


def summary(p: Plan, arguments: dict, now: float) -> dict:
    """``export.json`` but for the file counts: the arguments, the time, the counts per split, what
    was left out by cause and the items whose audio failed."""
    totals = p.totals()
    return {
        "complete": True,
        "exported_at": iso(now),
        "arguments": arguments,
        "splits": totals,
        "total": {
            "segments": sum(t["segments"] for t in totals.values()),
            "seconds": round(sum(t["seconds"] for t in totals.values()), 3),
            "words": sum(t["words"] for t in totals.values()),
        },
        "left_out": p.left_out_dict(),
        "problems": p.problems,
    }


def arguments_of(db: str, data_dir: Path, config: str | None, options: ExportOptions) -> dict:
    """The export's arguments for ``export.json`` (a database URL without its password)."""
    shown = make_url(db).render_as_string(hide_password=True) if "://" in db else str(Path(db).expanduser().resolve())
    return {"db": shown, "data_dir": str(data_dir.resolve()), "config": config} | options.to_dict()
