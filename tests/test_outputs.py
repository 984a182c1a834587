"""Result files: JSON document, subtitles, atomic writes, completion marker, output paths."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from speechpipe.pipeline.evaluate.quality.wer import score
from speechpipe.pipeline.offline import outputs
from speechpipe.pipeline.offline.outputs import (
    FileResult,
    atomic_write_text,
    cues,
    from_json_dict,
    is_complete,
    output_path,
    srt,
    srt_timestamp,
    to_json_dict,
    txt,
    vtt,
    vtt_timestamp,
    write_outputs,
)
from speechpipe.stages.asr import Transcript, Word


def words_of(text: str, start: float, step: float) -> list[Word]:
    return [Word(start + i * step, start + (i + 1) * step, " " + w, 0.9) for i, w in enumerate(text.split())]


def seg(index: int, start: float, end: float, text: str, words: list[Word] | None = None) -> Transcript:
    if words is None:
        words = words_of(text, start, (end - start) / max(1, len(text.split())))
    return Transcript(index, start, end, " " + text, words, -0.25, 0.01, 1.4)


def result(segments: list[Transcript], **kw) -> FileResult:
    return FileResult(
        file="in/sub/a.wav",
        duration=12.3456,
        text=" ".join(s.text.strip() for s in segments),
        segments=segments,
        sample_rate=16000,
        channels=1,
        vad_config_id="vad-3-30",
        asr_model="tiny.en",
        **kw,
    )


# ----------------------------------------------------------------------------- timestamps


def test_timestamps() -> None:
    assert srt_timestamp(3661.5) == "01:01:01,500"
    assert vtt_timestamp(3661.5) == "01:01:01.500"
    assert srt_timestamp(0) == "00:00:00,000"
    assert srt_timestamp(59.9996) == "00:01:00,000"
    assert vtt_timestamp(1.0004) == "00:00:01.000"
    assert srt_timestamp(-0.01) == "00:00:00,000"
    assert srt_timestamp(100 * 3600) == "100:00:00,000"


# ------------------------------------------------------------------------------- subtitles


def test_srt_numbering_and_blank_lines() -> None:
    segments = [
        seg(0, 0.5, 2.0, "Hello there."),
        seg(1, 2.5, 3.0, "  "),
        seg(2, 3661.5, 3663.25, "General Kenobi."),
    ]
    assert srt(segments) == (
        "1\n00:00:00,500 --> 00:00:02,000\nHello there.\n\n2\n01:01:01,500 --> 01:01:03,250\nGeneral Kenobi.\n"
    )


def test_vtt_header_and_escaping() -> None:
    segments = [seg(0, 0.5, 2.0, "Fish & chips <b>"), seg(1, 3661.5, 3663.25, "Done.")]
    assert vtt(segments) == (
        "WEBVTT\n\n00:00:00.500 --> 00:00:02.000\nFish &amp; chips &lt;b&gt;\n\n01:01:01.500 --> 01:01:03.250\nDone.\n"
    )
    assert vtt([]) == "WEBVTT\n"
    assert srt([]) == ""


def test_short_segment_wraps_into_two_lines() -> None:
    text = "And so my fellow Americans, ask not what your country can do for you"
    assert 42 < len(text) <= 84
    [(start, end, cue)] = cues([seg(0, 1.0, 5.0, text)])
    assert (start, end) == (1.0, 5.0)
    lines = cue.split("\n")
    assert len(lines) == 2 and all(len(line) <= 42 for line in lines)
    assert " ".join(lines) == text


def test_long_segment_split_at_word_boundaries() -> None:
    text = (
        "He hoped there would be stew for dinner, turnips and carrots and bruised potatoes "
        "and fat mutton pieces to be ladled out in thick peppered flour fattened sauce"
    )
    s = seg(3, 10.0, 22.0, text)
    out = cues([s])
    assert len(out) >= 2
    assert out[0][0] == 10.0 and out[-1][1] == 22.0
    # cues in order, no overlap, every cue within limits, all words kept in order
    for (s0, e0, _), (s1, _, _) in itertools.pairwise(out):
        assert s0 < e0 <= s1
    for start, end, cue in out:
        assert end - start <= outputs.CUE_MAX_S + 1e-9
        lines = cue.split("\n")
        assert len(lines) <= 2 and all(len(line) <= 42 for line in lines)
    assert " ".join(c.replace("\n", " ") for _, _, c in out) == text
    # cue boundaries fall on word timestamps
    word_ends = {w.end for w in s.words}
    assert all(e in word_ends for _, e, _ in out[:-1])
    assert srt([s]).count(" --> ") == len(out)
    assert srt([s]).split("\n\n")[1].startswith("2\n")


def test_long_in_time_segment_split() -> None:
    s = seg(0, 0.0, 20.0, "one two three four five")  # short text, 4 s per word
    out = cues([s])
    assert [c for _, _, c in out] == ["one", "two", "three", "four", "five"]


def test_long_segment_without_words() -> None:
    text = " ".join(["word"] * 40)
    s = seg(0, 0.0, 10.0, text, words=[])
    out = cues([s])
    assert len(out) >= 2
    assert out[0][0] == 0.0 and out[-1][1] == 10.0
    assert sum(c.replace("\n", " ").count("word") for _, _, c in out) == 40


def test_txt() -> None:
    r = result([seg(0, 0, 1, "Hello there."), seg(1, 1, 2, ""), seg(2, 2, 3, "Bye.")])
    assert txt(r) == "Hello there.\nBye.\n"
    assert txt(result([])) == ""


# ------------------------------------------------------------------------------------ JSON


def test_json_dict_fields() -> None:
    s = seg(0, 1.23456, 2.5, "Hello there.")
    doc = to_json_dict(result([s], wall_s=0.98765))
    assert doc["complete"] is True
    assert doc["duration"] == 12.346 and doc["wall_s"] == 0.988
    assert "wer" not in doc and "reference" not in doc
    [sd] = doc["segments"]
    assert sd["start"] == 1.235 and sd["end"] == 2.5 and sd["text"] == "Hello there."
    assert sd["index"] == 0
    assert {"avg_logprob", "no_speech_prob", "compression_ratio"} <= set(sd)
    assert [w["word"] for w in sd["words"]] == ["Hello", "there."]
    assert set(sd["words"][0]) == {"start", "end", "word", "probability"}
    for key in ("file", "text", "sample_rate", "channels", "vad_config_id", "asr_model"):
        assert key in doc


def test_json_with_wer_and_extra() -> None:
    ref = "Hello there, general"
    r = result([seg(0, 0, 1, "Hello there.")], wer=score(ref, "Hello there."), reference=ref)
    r.extra["timings"] = {"asr_s": 1.0}
    doc = to_json_dict(r)
    assert doc["reference"] == ref
    assert doc["wer"]["deletions"] == 1 and doc["wer"]["ref_words"] == 3
    assert doc["timings"] == {"asr_s": 1.0}
    r.extra["text"] = "clobber"
    with pytest.raises(ValueError):
        to_json_dict(r)


def test_json_non_finite_becomes_null() -> None:
    s = seg(0, 0, 1, "x")
    s.avg_logprob = float("-inf")
    doc = to_json_dict(result([s]))
    assert doc["segments"][0]["avg_logprob"] is None
    json.dumps(doc, allow_nan=False)


def test_json_round_trip(tmp_path: Path) -> None:
    ref = "Hello there"
    r = result(
        [seg(0, 0.5, 2.0, "Hello there."), seg(1, 2.5, 4.0, "General Kenobi.")],
        wer=score(ref, "Hello there. General Kenobi."),
        reference=ref,
        wall_s=1.5,
        extra={"note": "x"},
    )
    json_path = tmp_path / "out" / "a.wav.json"
    write_outputs(r, json_path)
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    assert doc == to_json_dict(r)
    back = from_json_dict(doc)
    assert to_json_dict(back) == doc
    assert back.wer == r.wer and back.extra == {"note": "x"}
    assert back.segments[1].words[0].word == " General"


# ----------------------------------------------------------------------------------- files


def test_write_outputs_files(tmp_path: Path, monkeypatch) -> None:
    r = result([seg(0, 0.5, 2.0, "Hello there.")])
    json_path = tmp_path / "OUT" / "a" / "b.wav.json"
    written: list[str] = []
    replace = os.replace

    def recording_replace(src, dst) -> None:  # the order the files land in
        written.append(Path(dst).name)
        replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", recording_replace)
    write_outputs(r, json_path)
    assert written[-1] == "b.wav.json" and len(written) == 4
    assert sorted(p.name for p in json_path.parent.iterdir()) == [
        "b.wav.json",
        "b.wav.srt",
        "b.wav.txt",
        "b.wav.vtt",
    ]
    assert (json_path.parent / "b.wav.txt").read_text() == "Hello there.\n"
    assert (json_path.parent / "b.wav.srt").read_text() == srt(r.segments)
    assert (json_path.parent / "b.wav.vtt").read_text().startswith("WEBVTT\n")
    assert is_complete(json_path)
    with pytest.raises(ValueError):
        write_outputs(r, tmp_path / "b.wav.txt")


def test_write_outputs_formats(tmp_path: Path) -> None:
    r = result([seg(0, 0.5, 2.0, "Hello there.")])
    write_outputs(r, tmp_path / "b.wav.json", formats=("json", "srt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.wav.json", "b.wav.srt"]
    write_outputs(r, tmp_path / "c.wav.json", formats=())
    assert is_complete(tmp_path / "c.wav.json")
    with pytest.raises(ValueError):
        write_outputs(r, tmp_path / "d.wav.json", formats=("pdf",))


def test_write_outputs_removes_stale_json_on_failure(tmp_path: Path, monkeypatch) -> None:
    r = result([seg(0, 0.5, 2.0, "Hello there.")])
    json_path = tmp_path / "b.wav.json"
    write_outputs(r, json_path)

    def boom(segments):
        raise RuntimeError("boom")

    monkeypatch.setattr(outputs, "vtt", boom)
    with pytest.raises(RuntimeError):
        write_outputs(r, json_path)
    assert not is_complete(json_path)


def test_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "f.txt"
    atomic_write_text(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_text(path, "again")
    assert path.read_text(encoding="utf-8") == "again"
    assert os.listdir(path.parent) == ["f.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_failure_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "bad \ud800 surrogate")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    assert not is_complete(path)
    full = json.dumps(to_json_dict(result([seg(0, 0, 1, "Hi")])))
    path.write_text(full)
    assert is_complete(path)
    path.write_text(full[: len(full) // 2])
    assert not is_complete(path)
    path.write_text(json.dumps({"complete": False}))
    assert not is_complete(path)
    path.write_text("[1, 2]")
    assert not is_complete(path)
    path.write_bytes(b"\xff\xfe")
    assert not is_complete(path)


# ----------------------------------------------------------------------------- output_path


def test_output_path_nested(tmp_path: Path) -> None:
    root = tmp_path / "in"
    out = tmp_path / "OUT"
    assert output_path(root / "sub" / "x.flac", root, out) == out / "sub" / "x.flac.json"
    assert output_path(root / "a" / "b" / "c.wav", root, out) == out / "a" / "b" / "c.wav.json"
    assert output_path(root / "top.wav", root, out) == out / "top.wav.json"


def test_output_path_single_file(tmp_path: Path) -> None:
    f = tmp_path / "in" / "talk.mp3"
    f.parent.mkdir()
    f.write_bytes(b"")
    out = tmp_path / "OUT"
    assert output_path(f, f, out) == out / "talk.mp3.json"
    assert output_path(f, f.parent, out) == out / "talk.mp3.json"


def test_output_path_relative_input(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in" / "s").mkdir(parents=True)
    assert output_path(Path("in/s/x.wav"), tmp_path / "in", Path("OUT")) == Path("OUT/s/x.wav.json")
    with pytest.raises(ValueError):
        output_path(Path("elsewhere/x.wav"), Path("in"), Path("OUT"))
