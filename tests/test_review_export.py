"""``speechpipe review export``: a real review store filled with corpus utterances, reviewed
through the store's own claim and submit, exported as a training set. The manifest against its
documented schema (every field, its type, the WAV it names, the ``.txt`` beside it), the splits
(by session, deterministic, stable as reviews come), no speech, duplicates, ``--min-agreement``,
``--since`` and ``--variant``, clips missing or broken, re-runs and interrupted runs, the command
end to end, ``speechpipe eval`` on the test split, and Hugging Face ``datasets`` loading it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, SPEECH

from speechpipe.pipeline.cli.main import main
from speechpipe.pipeline.review.export import (
    SPLITS,
    ClipError,
    ExportOptions,
    Reviewed,
    cut,
    file_stem,
    parse_since,
    plan,
    split_of,
)
from speechpipe.pipeline.review.export_files import clip_reader, read_reviewed, write_export
from speechpipe.pipeline.review.policy import VAD_AUDIT, audit_key
from speechpipe.pipeline.review.store import AiText, NewItem, ReviewStore
from speechpipe.stages.audio import load_audio

pytestmark = pytest.mark.corpus

T0 = 1_800_000_000.0
#: short corpus utterances (under 4.1 s), each with its reference
SHORT = [
    "cmuarctic_aew_a0001.wav",
    "cmuarctic_aew_a0002.wav",
    "cmuarctic_aew_a0003.wav",
    "cmuarctic_axb_a0004.wav",
    "cmuarctic_axb_a0005.wav",
    "cmuarctic_axb_a0006.wav",
    "cmuarctic_unknown-spk_a0024.wav",
    "ljspeech_LJ001-0002.wav",
    "ljspeech_LJ001-0008.wav",
    "ljspeech_LJ001-0013.wav",
    "librivox_sense-and-sensibility-01_0880.wav",
    "librivox_sense-and-sensibility-01_0930.wav",
    "timit_LDC93S1.wav",
]
#: the manifest's fields and their JSON types (docs/review.md, "Export for training")
FIELDS = {
    "file_name": str,
    "audio_filepath": str,
    "duration": float,
    "text": str,
    "variant": str,
    "model": str,
    "ai_text": (str, type(None)),
    "ai_wer": (float, type(None)),
    "reason": str,
    "reviewed_at": str,
    "reviewer": str,
    "session": str,
    "segment": int,
    "start": float,
    "end": float,
    "margin_s": float,
}
MARGIN = 0.3  # each clip holds this much of its utterance on each side of the segment


@cache
def utterance(k: int) -> tuple[np.ndarray, str]:
    """The ``k``-th short utterance (16 kHz float32) and its reference; past the last, the first
    again less 1 ms of its leading silence per round, so that every ``k`` has its own samples."""
    path = SPEECH / SHORT[k % len(SHORT)]
    audio, _ = load_audio(path)
    return audio[(k // len(SHORT)) * 16 :], " ".join(path.with_suffix(".txt").read_text(encoding="utf-8").split())


def put(
    store: ReviewStore,
    session: str,
    segment: int,
    k: int,
    *,
    text: str | None = None,
    ai: str | None = "",
    variant: str = "default",
    at: float = 0.0,
    before: str = "",
    after: str = "",
    clip: np.ndarray | None = None,
    margins: tuple[float, float] = (MARGIN, MARGIN),
    reason: str = "level",
):
    """Queue utterance ``k`` as the clip of ``session``'s ``segment`` (the segment the utterance
    less ``margins`` at its ends) and review it at ``T0 + at`` with ``text`` (default: its
    reference); ``ai`` is the AI's text ("": the reference too; None: no model ran)."""
    audio, reference = utterance(k)
    clip = audio if clip is None else clip
    start = 10.0 * segment if segment >= 0 else 5.0
    length = clip.size - round(margins[0] * 16000) - round(margins[1] * 16000)
    ai_text = reference if ai == "" else ai
    new = NewItem(
        session=session,
        segment=segment,
        variant=variant,
        level="assist" if ai_text is not None else "human",
        reason=reason,
        start_s=start,
        end_s=start + length / 16000,
        audio=clip,
        draft=ai_text,
        transcripts=[AiText(variant, "primary", ai_text)] if ai_text is not None else [],
        margin_before_s=margins[0],
        margin_after_s=margins[1],
    )
    store.add(new, T0 + at)
    claimed = store.claim("ann", T0 + at, 60)
    assert (claimed.session, claimed.segment) == (session, segment)
    return store.submit(claimed.id, reference if text is None else text, claimed.claim, "ann", T0 + at, before, after)


def export(db: str, data: Path, out: Path, on_written=None, model_of=lambda v: v, **options) -> dict:
    """What ``speechpipe review export`` does, in this process."""
    store = ReviewStore(db)
    try:
        rows = read_reviewed(store)
    finally:
        store.close()
    reader = clip_reader(data)
    p = plan(rows, ExportOptions(**options), reader, model_of)
    return write_export(p, out, reader, {"test": True}, T0 + 86400, on_written)


def manifest(out: Path, split: str) -> list[dict]:
    path = out / split / "metadata.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def everything(out: Path) -> dict[str, list[dict]]:
    return {s: manifest(out, s) for s in SPLITS}


def fill(store: ReviewStore, sessions: int, per_session: int = 2, at: float = 0.0, prefix: str = "sess") -> None:
    """``sessions`` sessions ``<prefix>000``... of ``per_session`` reviewed segments each."""
    for n in range(sessions):
        for seg in range(per_session):
            put(store, f"{prefix}{n:03d}", seg, int(at) + n * per_session + seg, at=at + n)


@pytest.fixture
def db(tmp_path) -> tuple[str, Path]:
    return str(tmp_path / "reviews.db"), tmp_path / "audio"


# -- the manifest and its files ------------------------------------------------------------------


def test_the_manifest_matches_its_schema_and_its_files(review_db, tmp_path):
    data = tmp_path / "audio"
    store = ReviewStore(review_db, data)
    fill(store, 12)
    put(store, "sess000", audit_key(5 * 16000), 3, reason=VAD_AUDIT, ai=None, margins=(0.0, 0.0))  # the VAD's
    store.close()
    out = tmp_path / "export"
    doc = export(review_db, data, out, model_of=lambda v: f"tiny.en ({v})")
    found = everything(out)
    assert sum(len(lines) for lines in found.values()) == 24 and doc["left_out"] == {"vad_audit": 1}
    store = ReviewStore(review_db, data)
    items = {(i.session, i.segment): i for n in range(12) for i in store.session(f"sess{n:03d}")}
    store.close()
    for split, lines in found.items():
        assert doc["splits"][split]["segments"] == len(lines)
        assert doc["splits"][split]["seconds"] == pytest.approx(sum(r["duration"] for r in lines), abs=1e-3)
        for r in lines:
            assert list(r) == list(FIELDS)
            for name, kind in FIELDS.items():
                assert isinstance(r[name], kind), (name, r[name])
            wav = out / split / r["file_name"]
            assert r["audio_filepath"] == r["file_name"] and wav.is_file()  # relative to the manifest's folder
            info = sf.info(wav)
            assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
            assert r["duration"] == info.frames / 16000
            assert wav.with_suffix(".txt").read_text(encoding="utf-8") == r["text"] + "\n"
            item = items[(r["session"], r["segment"])]
            reference = utterance(int(r["session"][4:]) * 2 + r["segment"])[1]
            assert (r["text"], r["ai_text"], r["ai_wer"]) == (reference, reference, 0.0)
            assert (r["start"], r["end"], r["margin_s"]) == (item.start_s, item.end_s, 0.1)
            assert (r["variant"], r["model"]) == ("default", "tiny.en (default)")
            assert (r["reason"], r["reviewer"]) == ("level", "ann")
            assert r["reviewed_at"] == f"2027-01-15T08:00:{int(r['session'][4:]):02d}Z"
            # the WAV is the clip's segment and 0.1 s on each side, sample for sample
            stored, _ = sf.read(data / item.audio, dtype="int16")
            m = round((MARGIN - 0.1) * 16000)
            assert np.array_equal(sf.read(wav, dtype="int16")[0], stored[m : stored.size - m])
    assert doc["total"]["segments"] == 24 and doc["total"]["words"] > 100 and doc["complete"] is True
    assert json.loads((out / "export.json").read_text()) == doc


def test_margins_are_what_the_clip_holds_and_none_where_the_reviewer_heard_words_in_them():
    audio, reference = utterance(0)
    end = 10.0 + (audio.size - 8000) / 16000  # the clip holds 0.25 s on each side of its segment
    row = Reviewed("i", "s", 0, "default", "level", 10.0, end, reference, None, "ann", T0, "x.flac", 0.25, 0.25)
    clip = np.round(audio * 32767).astype(np.int16)
    assert cut(clip, row, 0.1).margin_s == 0.1 and cut(clip, row, 0.1).frames == audio.size - 8000 + 3200
    assert cut(clip, row, 1.0).margin_s == 0.25 and cut(clip, row, 1.0).frames == audio.size  # all the clip holds
    one_sided = replace(row, margin_before_s=0.05)
    assert cut(clip[3200:], one_sided, 0.1).margin_s == 0.05  # the same on both sides: the shorter one
    heard = replace(row, text_after="Philip")
    assert cut(clip, heard, 0.1).margin_s == 0.0 and cut(clip, heard, 0.1).frames == audio.size - 8000
    assert cut(clip, row, 0.1).digest == cut(clip, heard, 0.3).digest  # the segment's samples, margins aside
    with pytest.raises(ClipError, match="holds") as short:
        cut(clip[:-5000], row, 0.1)
    assert short.value.cause == "short_audio"


def test_names_and_options_are_checked():
    assert file_stem("3f9c2a61b0d4", 7) == "3f9c2a61b0d4-00007"
    odd = file_stem("../etc/a b", 1)
    assert "/" not in odd and " " not in odd and odd != file_stem("../etc/a_b", 1) and odd.endswith("-00001")
    for bad, says in (
        ({"splits": (0.8, 0.2)}, "--splits"),
        ({"splits": (0, 0, 0)}, "--splits"),
        ({"splits": (1, -0.1, 0.1)}, "--splits"),
        ({"margin_s": -0.1}, "--margin-s"),
        ({"margin_s": 11.0}, "--margin-s"),
        ({"min_agreement": 1.5}, "--min-agreement"),
        ({"no_speech": "drop"}, "--no-speech"),
    ):
        with pytest.raises(ValueError, match=says):
            ExportOptions(**bad)


# -- splits ----------------------------------------------------------------------------------------


def test_splits_are_by_session_deterministic_and_a_session_keeps_its_split(db, tmp_path):
    path, data = db
    store = ReviewStore(path, data)
    fill(store, 30)
    store.close()
    export(path, data, tmp_path / "a")
    export(path, data, tmp_path / "b")
    first = everything(tmp_path / "a")
    assert first == everything(tmp_path / "b")  # the same database twice: the same export
    where = {r["session"]: s for s, lines in first.items() for r in lines}
    for s, lines in first.items():
        assert all(where[r["session"]] == s for r in lines)  # no session in two splits
        assert all(split_of(r["session"], 0, (0.8, 0.1, 0.1)) == s for r in lines)
    assert all(first.values()) and len(where) == 30
    # more reviews come, of the same sessions and of new ones: every session keeps its split
    store = ReviewStore(path, data)
    for n in range(30):
        put(store, f"sess{n:03d}", 2, 1000 + n, at=1000 + n)
    fill(store, 10, at=2000, prefix="more")
    store.close()
    export(path, data, tmp_path / "a")
    later = everything(tmp_path / "a")
    assert sum(len(lines) for lines in later.values()) == 30 * 3 + 10 * 2
    assert all(where.get(r["session"], s) == s for s, lines in later.items() for r in lines)
    # another seed: another split of the same sessions
    export(path, data, tmp_path / "c", seed=7)
    seeded = {r["session"]: s for s, lines in everything(tmp_path / "c").items() for r in lines}
    assert {k: seeded[k] for k in where} != where


def test_split_shares_follow_the_hash():
    ids = [f"{n:012x}" for n in range(20000)]
    counts = {s: 0 for s in SPLITS}
    for i in ids:
        counts[split_of(i, 0, (0.8, 0.1, 0.1))] += 1
    assert counts["train"] / 20000 == pytest.approx(0.8, abs=0.01)
    assert counts["dev"] / 20000 == pytest.approx(0.1, abs=0.01)
    assert {split_of(i, 3, (0.0, 0.0, 1.0)) for i in ids[:200]} == {"test"}
    assert ExportOptions(splits=(8, 1, 1)).splits == pytest.approx((0.8, 0.1, 0.1))


# -- what is left out, and why ------------------------------------------------------------------


def test_no_speech_is_skipped_or_kept_with_an_empty_text(db, tmp_path):
    path, data = db
    store = ReviewStore(path, data)
    put(store, "quiet", 0, 0, text="", ai="")  # the reviewer heard no speech; the AI said something
    put(store, "quiet", 1, 1, text="  ", ai=None)
    put(store, "talk", 0, 2)
    store.close()
    skipped = export(path, data, tmp_path / "skip")
    assert skipped["left_out"] == {"no_speech": 2} and skipped["total"]["segments"] == 1
    kept = export(path, data, tmp_path / "keep", no_speech="keep", splits=(0, 0, 1))
    lines = {(r["session"], r["segment"]): r for r in manifest(tmp_path / "keep", "test")}
    assert kept["left_out"] == {} and len(lines) == 3
    quiet = lines[("quiet", 0)]
    assert quiet["text"] == "" and quiet["ai_text"] == utterance(0)[1]
    assert quiet["ai_wer"] == float(len(utterance(0)[1].split()))  # an empty reference: every AI word an error
    assert (tmp_path / "keep" / "test" / quiet["file_name"]).with_suffix(".txt").read_text() == "\n"
    assert (lines[("quiet", 1)]["text"], lines[("quiet", 1)]["ai_text"], lines[("quiet", 1)]["ai_wer"]) == (
        "",
        None,
        None,
    )


def test_duplicates_keep_one_where_the_texts_agree_and_none_where_they_do_not(db, tmp_path):
    path, data = db
    audio, reference = utterance(0)
    wider = np.concatenate([utterance(1)[0][-3200:], audio])  # the same segment, 0.2 s more before it
    store = ReviewStore(path, data)
    put(store, "first", 0, 0, at=0)
    put(store, "resumed", 4, 0, text=reference.upper().replace(",", ""), at=5, clip=wider, margins=(0.5, MARGIN))
    put(store, "a", 0, 2, at=10)
    put(store, "b", 0, 2, text="something else entirely", at=11)
    put(store, "c", 0, 2, at=12)
    put(store, "single", 0, 3, at=13)
    store.close()
    doc = export(path, data, tmp_path / "out", splits=(1, 0, 0))
    assert doc["left_out"] == {"duplicate": 1, "conflicting": 3}
    lines = manifest(tmp_path / "out", "train")
    assert [(r["session"], r["segment"]) for r in lines] == [("first", 0), ("single", 0)]  # the first reviewed kept


def test_min_agreement_keeps_the_segments_whose_ai_text_agrees_with_the_reviewer(db, tmp_path):
    path, data = db
    reference = utterance(0)[1]  # "Author of the danger trail, Philip Steels, etc." (8 words)
    store = ReviewStore(path, data)
    put(store, "s", 0, 0, ai=reference)  # WER 0
    put(store, "s", 1, 13, ai="Author of the danger trail")  # WER 3/8
    put(store, "s", 2, 26, ai="nothing like it")  # WER 1
    put(store, "s", 3, 1, ai=None)  # level human: no AI text
    store.close()
    everything_ = export(path, data, tmp_path / "all", splits=(1, 0, 0))
    wers = {r["segment"]: r["ai_wer"] for r in manifest(tmp_path / "all", "train")}
    assert everything_["left_out"] == {} and wers == {0: 0.0, 1: 0.375, 2: 1.0, 3: None}
    doc = export(path, data, tmp_path / "agree", min_agreement=0.6, splits=(1, 0, 0))
    assert doc["left_out"] == {"below_agreement": 1, "no_ai_text": 1}
    assert [r["segment"] for r in manifest(tmp_path / "agree", "train")] == [0, 1]
    assert export(path, data, tmp_path / "strict", min_agreement=1.0)["total"]["segments"] == 1


def test_since_and_variant_select_the_segments(db, tmp_path):
    path, data = db
    store = ReviewStore(path, data)
    put(store, "old", 0, 0, at=0)
    put(store, "new", 0, 1, at=3600)
    put(store, "green", 0, 2, at=7200, variant="green")
    store.close()
    since = parse_since("2027-01-15T08:30:00Z")
    assert since == T0 + 1800 == parse_since(str(T0 + 1800)) and parse_since("2027-01-15") == T0 - 8 * 3600
    doc = export(path, data, tmp_path / "since", since=since, splits=(1, 0, 0))
    assert doc["left_out"] == {"before_since": 1}
    assert [r["session"] for r in manifest(tmp_path / "since", "train")] == ["green", "new"]
    doc = export(path, data, tmp_path / "green", variant="green", splits=(1, 0, 0))
    assert doc["left_out"] == {"other_variant": 2} and [
        r["variant"] for r in manifest(tmp_path / "green", "train")
    ] == ["green"]
    with pytest.raises(ValueError, match="--since"):
        parse_since("last tuesday")


def test_a_missing_or_broken_clip_is_reported_and_the_rest_exported(db, tmp_path):
    path, data = db
    store = ReviewStore(path, data)
    gone = put(store, "s", 0, 0, at=-40 * 86400)  # its audio is deleted after keep_days
    missing = put(store, "s", 1, 1)
    broken = put(store, "s", 2, 2)
    truncated = put(store, "s", 3, 3)
    put(store, "s", 4, 4)
    assert store.purge(T0, keep_days=30) == 1 and store.get(gone.id).audio is None
    store.audio_path(missing).unlink()
    store.audio_path(broken).write_bytes(b"fLaC but not really")
    sf.write(store.audio_path(truncated), utterance(3)[0][:8000], 16000, format="FLAC", subtype="PCM_16")
    store.close()
    doc = export(path, data, tmp_path / "out", splits=(1, 0, 0))
    assert doc["left_out"] == {"no_audio": 1, "missing_audio": 1, "unreadable_audio": 1, "short_audio": 1}
    assert sorted((p["segment"], p["cause"]) for p in doc["problems"]) == [
        (1, "missing_audio"),
        (2, "unreadable_audio"),
        (3, "short_audio"),
    ]
    problems = {p["segment"]: p for p in doc["problems"]}
    assert str(data) in problems[1]["error"] and problems[2]["item"] == broken.id
    assert [r["segment"] for r in manifest(tmp_path / "out", "train")] == [4]
    # a clip replaced between the plan and the writing (a retention job, a restore): reported too
    store = ReviewStore(path, data)
    rows = read_reviewed(store)
    kept = next(i for i in store.session("s") if i.segment == 4)
    reader = clip_reader(data)
    p = plan(rows, ExportOptions(splits=(1, 0, 0)), reader)
    sf.write(store.audio_path(kept), utterance(5)[0][: sf.info(store.audio_path(kept)).frames], 16000, subtype="PCM_16")
    store.close()
    doc = write_export(p, tmp_path / "out", reader, {}, T0)
    assert doc["left_out"]["changed_audio"] == 1 and doc["total"]["segments"] == 0
    assert not (tmp_path / "out" / "train").exists()  # its earlier files and manifest went with it


# -- re-runs -------------------------------------------------------------------------------------


def test_a_rerun_reuses_every_file_and_an_interrupted_one_completes(db, tmp_path):
    path, data = db
    store = ReviewStore(path, data)
    fill(store, 8)
    store.close()
    out = tmp_path / "out"

    class Stop(Exception):
        pass

    def stop_after(n: int):
        written = []

        def hook(entry) -> None:
            written.append(entry.name)
            if len(written) == n:
                raise Stop

        return hook

    with pytest.raises(Stop):
        export(path, data, out, on_written=stop_after(5))
    assert not (out / "export.json").exists() and everything(out) == {s: [] for s in SPLITS}  # no manifest yet
    (out / "train" / ".x.wav.deadbeef.tmp").write_bytes(b"half a file")  # as a kill mid-write leaves
    doc = export(path, data, out)
    assert doc["files"] == {"written": 11, "reused": 5, "removed": 0} and doc["total"]["segments"] == 16
    assert not (out / "train" / ".x.wav.deadbeef.tmp").exists()
    files = {f: (f.stat().st_mtime_ns, f.stat().st_ino) for f in out.rglob("*.wav")}
    manifests = everything(out)
    again = export(path, data, out)
    assert again["files"] == {"written": 0, "reused": 16, "removed": 0}
    assert {f: (f.stat().st_mtime_ns, f.stat().st_ino) for f in out.rglob("*.wav")} == files
    assert everything(out) == manifests
    # Another export into the same folder (another seed moves sessions), interrupted: the old
    # manifests name only files that are there; completed, the files it does not name are gone.
    with pytest.raises(Stop):
        export(path, data, out, on_written=stop_after(9), seed=5, no_speech="keep")
    assert not (out / "export.json").exists()
    for s, lines in everything(out).items():
        assert all((out / s / r["file_name"]).is_file() for r in lines)
    done = export(path, data, out, seed=5)
    named = {out / s / r["file_name"] for s, lines in everything(out).items() for r in lines}
    assert set(out.rglob("*.wav")) == named and len(named) == 16 and done["files"]["removed"] > 0
    assert {f.with_suffix(".txt") for f in named} == set(out.rglob("*.txt"))
    assert all(not (out / s).exists() or (out / s / "metadata.jsonl").exists() for s in SPLITS)


# -- the command, and what reads the export ------------------------------------------------------


def test_the_command_exports_and_prints_a_summary(db, tmp_path):
    path, data = db
    store = ReviewStore(path, data)
    fill(store, 6)
    put(store, "g", 0, 40, variant="green", ai="Author of the danger")
    put(store, "q", 0, 41, text="")
    store.close()
    config = tmp_path / "serve.toml"
    config.write_text('[asr]\nmodel = "tiny.en"\n\n[variants.green.asr]\nmodel = "base.en"\n')
    out = tmp_path / "export"
    command = [sys.executable, "-m", "speechpipe.pipeline.cli", "review", "export", "--db", path, "-o", str(out)]

    def run(*more: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            command + list(more), check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path
        )

    done = run("--data-dir", str(data), "--config", str(config), "--splits", "0.6,0.2,0.2", "--margin-s", "0.2")
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "export.json").read_text())
    lines = done.stdout.splitlines()
    assert lines[0] == f"13 segments, {doc['total']['seconds']:.1f} s, {doc['total']['words']} words exported to {out}/"
    assert [line.split(":")[0].strip() for line in lines[1:4]] == list(SPLITS)
    assert "left out: no_speech 1" in done.stdout and "files: 13 written, 0 already there, 0 removed" in done.stdout
    models = {r["variant"]: (r["model"], r["margin_s"]) for s in SPLITS for r in manifest(out, s)}
    assert models == {"default": ("tiny.en", 0.2), "green": ("base.en", 0.2)}
    assert doc["arguments"]["splits"] == {"train": 0.6, "dev": 0.2, "test": 0.2}
    assert doc["arguments"]["db"] == str(Path(path).resolve()) and doc["arguments"]["config"] == str(config)
    # bad input: a clear error, and nothing lost or made
    rerun = run("--data-dir", str(data), "--splits", "0.6,0.2,0.2", "--margin-s", "0.2")  # no config this time
    assert "files: 0 written, 13 already there, 0 removed" in rerun.stdout  # the same audio and texts
    assert {r["model"] for s in SPLITS for r in manifest(out, s) if r["variant"] == "green"} == {"green"}
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = run("--data-dir", str(data), "-o", str(other))
    assert refused.returncode == 2 and "holds no export" in refused.stderr and os.listdir(other) == ["keep.txt"]
    no_audio = run()  # the default data directory: review-audio beside the database, not there
    assert no_audio.returncode == 2 and "no audio folder" in no_audio.stderr
    command[command.index(path)] = str(tmp_path / "typo.db")
    missing = run("--data-dir", str(data))
    assert missing.returncode == 2 and "no review database" in missing.stderr and not (tmp_path / "typo.db").exists()
    for bad, says in (("--splits=0.8,0.2", "--splits"), ("--min-agreement=2", "--min-agreement")):
        wrong = run("--data-dir", str(data), bad)
        assert wrong.returncode == 2 and says in wrong.stderr


def test_speechpipe_eval_scores_a_variant_on_the_exported_test_split(db, tmp_path):
    path, data = db
    store = ReviewStore(path, data)
    put(store, "e1", 0, 4)  # "Will we ever forget it." (1.6 s)
    put(store, "e2", 0, 12)  # "She had your dark suit in greasy wash water all year." (2.9 s)
    store.close()
    out = tmp_path / "export"
    export(path, data, out, splits=(0, 0, 1))
    assert main(["eval", str(out / "test"), "-o", str(tmp_path / "eval"), "--threads", "2", "--no-report"]) == 0
    doc = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert doc["files"] == 2 and doc["failed"] == []
    (variant,) = doc["variants"].values()
    assert (variant["files"], variant["scored_files"], variant["ref_words"]) == (2, 2, 5 + 11)
    assert variant["wer"] < 0.3 and variant["audio_s"] == pytest.approx(doc_duration(out), abs=0.01)


def doc_duration(out: Path) -> float:
    return json.loads((out / "export.json").read_text())["total"]["seconds"]


def test_hugging_face_datasets_loads_the_export(db, tmp_path):
    """With ``datasets`` importable here, or a python that has it in SPEECHPIPE_HF_PYTHON
    (benchmarks/load_export.py runs there); skipped otherwise (it is no dependency)."""
    hf_python = os.environ.get("SPEECHPIPE_HF_PYTHON")
    try:
        import datasets  # noqa: F401
    except ImportError:
        if not hf_python:
            pytest.skip("datasets is not installed (set SPEECHPIPE_HF_PYTHON to a python that has it)")
    path, data = db
    store = ReviewStore(path, data)
    fill(store, 12)
    put(store, "human", 0, 50, ai=None)
    store.close()
    out = tmp_path / "export"
    doc = export(path, data, out)
    script = [hf_python or sys.executable, str(ROOT / "benchmarks" / "load_export.py"), str(out), "--json"]
    script += ["--cache-dir", str(tmp_path / "hf-cache")]
    done = subprocess.run(script, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    hf_names = {"train": "train", "dev": "validation", "test": "test"}
    assert found["splits"] == {hf_names[s]: t["segments"] for s, t in doc["splits"].items() if t["segments"]}
    assert found["features"]["audio"].startswith("Audio(sampling_rate=None")
    assert found["features"]["text"] == found["features"]["model"] == "Value(dtype='string', id=None)"
    assert found["features"]["duration"] == found["features"]["ai_wer"] == "Value(dtype='float64', id=None)"
    first = manifest(out, next(s for s in SPLITS if doc["splits"][s]["segments"]))[0]
    assert found["first"]["text"] == first["text"] and found["first"]["duration"] == first["duration"]
    assert found["first"]["sampling_rate"] == 16000 and found["first"]["samples"] == round(first["duration"] * 16000)
