"""The OpenAI-compatible endpoint against ``speechpipe transcribe`` on the same files, with the
official ``openai`` SDK as the client of a real ``speechpipe serve``.

    python benchmarks/openai_api.py [--files N]

Every corpus utterance with a reference (../shared/corpus/speech) and the 62 s recording: the
corpus WER of `speechpipe transcribe` (a process over the folder), then of
``POST /v1/audio/transcriptions`` in every ``response_format`` (one request per file, one after
another), and of ``stream=true`` (the deltas joined), with the wall time of each pass.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deployment import Server
from live_streams import CORPUS
from machine import machine_line

from speechpipe.pipeline.evaluate.quality.wer import score_corpus

ROOT = Path(__file__).resolve().parents[1]


def corpus_files(limit: int | None) -> list[Path]:
    speech = sorted(p for p in (CORPUS / "speech").iterdir() if p.suffix in (".wav", ".flac"))
    files = [p for p in speech if p.with_suffix(".txt").exists()] + sorted((CORPUS / "long").glob("*.mp3"))
    return files[:limit] if limit else files


def words_of(answer, fmt: str) -> str:
    if fmt in ("json", "verbose_json"):
        return answer.text
    if fmt == "text":
        return answer
    cues = [ln for ln in answer.splitlines() if ln.strip() and "-->" not in ln and ln.strip() != "WEBVTT"]
    return " ".join(ln for ln in cues if not re.fullmatch(r"\d+", ln.strip()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, help="only the first N files")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    files = corpus_files(args.files)
    refs = [p.with_suffix(".txt").read_text() for p in files]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for p in files:
            (folder / p.name).symlink_to(p)
            (folder / p.with_suffix(".txt").name).symlink_to(p.with_suffix(".txt"))
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "speechpipe.pipeline.cli", "transcribe", str(folder), "-o", f"{tmp}/out"]
        subprocess.run(cmd + ["--no-progress"], cwd=ROOT, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        texts = [json.loads((Path(tmp) / "out" / f"{p.name}.json").read_text())["text"] for p in files]
        rows.append(("speechpipe transcribe (whole process)", score_corpus(zip(refs, texts)), wall))
        server = Server("", [], Path(tmp))
        try:
            api = openai.OpenAI(base_url=server.http + "/v1", api_key="unused", max_retries=0)
            for fmt in ("json", "text", "srt", "vtt", "verbose_json"):
                t0 = time.perf_counter()
                hyps = []
                for p in files:
                    with p.open("rb") as f:
                        hyps.append(
                            words_of(
                                api.audio.transcriptions.create(file=f, model="whisper-1", response_format=fmt), fmt
                            )
                        )
                rows.append(
                    (f"/v1/audio/transcriptions {fmt}", score_corpus(zip(refs, hyps)), time.perf_counter() - t0)
                )
            t0 = time.perf_counter()
            hyps = []
            for p in files:
                with p.open("rb") as f:
                    events = list(api.audio.transcriptions.create(file=f, model="whisper-1", stream=True))
                hyps.append("".join(e.delta for e in events if e.type == "transcript.text.delta"))
                assert events[-1].type == "transcript.text.done" and events[-1].text == hyps[-1]
            rows.append(
                ("/v1/audio/transcriptions stream=true", score_corpus(zip(refs, hyps)), time.perf_counter() - t0)
            )
        finally:
            server.stop()
    audio_s = sum(_duration(p) for p in files)
    print(f"\n{len(files)} files, {audio_s:.0f} s of audio, {rows[0][1].ref_words} reference words\n")
    print("| path | WER | vs transcribe | wall s |")
    print("|---|---:|---:|---:|")
    base = rows[0][1].wer
    for name, w, wall in rows:
        print(f"| {name} | {w.wer:.2%} | {100 * (w.wer - base):+.2f} pt | {wall:.1f} |")
    return 0


def _duration(path: Path) -> float:
    from speechpipe.stages.audio import probe

    return probe(path).duration_s


if __name__ == "__main__":
    raise SystemExit(main())
