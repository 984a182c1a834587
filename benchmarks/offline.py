"""Long-audio benchmark: speechpipe's offline path against plain faster-whisper, side by side.

Builds one long recording from the corpus (every utterance of ``speech/``, joined by 1-4 s gaps of
digital silence or of the corpus noise clips, seeded), then transcribes it, in one process and
with one shared model (tiny.en int8, beam 1, same thread count), with:

* speechpipe (``transcribe_file``: file decode, resampling, VAD, packed ASR windows)
* faster-whisper ``transcribe(vad_filter=False)``
* faster-whisper ``transcribe(vad_filter=True)`` (its Silero VAD)
* the same two with ``word_timestamps=True``, which speechpipe always computes

Each configuration runs ``--repeat`` times, interleaved, and the table shows the median wall time,
and what each run asked of the model: encoder passes (30 s windows encoded), decoded tokens (every
decode, temperature fallbacks included) and CPU seconds per second of audio (the process's CPU
time over the run, all threads). faster-whisper gets the already decoded 16 kHz array, so its rows
exclude decoding; speechpipe's include it. ``--processes`` adds whole processes (model load, file
decode and outputs included), with their CPU time from the operating system: after one untimed
run of each (the model files in the page cache; Python may write its bytecode cache, as an
installed package has one), ``speechpipe transcribe`` as shipped, the same with the allocator
tuning off (``SPEECHPIPE_MALLOC_TUNING=0``), and faster-whisper's script plain and with that tuning,
so the table shows what the tuning gives each. This process tunes the allocator as the command
line does, so every in-process row runs with it.

    python benchmarks/offline.py [--repeat 3] [--threads 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
from machine import machine_line

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.quality.wer import score
from speechpipe.pipeline.offline.allocator import tune_allocator
from speechpipe.pipeline.offline.runner import parallel_config, transcribe_file
from speechpipe.stages.asr import AsrConfig, AsrEngine, load_model
from speechpipe.stages.audio import load_audio

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
RATE = 16000
NOISE_RMS_DBFS = -35.0


def build_long_file(seed: int, folder: str = "speech") -> tuple[np.ndarray, str, dict]:
    """Concatenate all utterances of the corpus ``folder`` with silence/noise gaps; returns audio,
    reference, facts."""
    rng = np.random.default_rng(seed)
    speech = sorted(p for p in (CORPUS / folder).iterdir() if p.suffix in (".wav", ".flac"))
    noises = [load_audio(p)[0] for p in sorted((CORPUS / "noise").glob("*.wav"))]
    parts: list[np.ndarray] = []
    refs: list[str] = []
    speech_s = noise_s = silence_s = 0.0
    for i, path in enumerate(speech):
        audio, _ = load_audio(path)
        parts.append(audio)
        refs.append(path.with_suffix(".txt").read_text(encoding="utf-8").strip())
        speech_s += audio.size / RATE
        if i == len(speech) - 1:
            break
        gap = int(rng.uniform(1.0, 4.0) * RATE)
        if i % 2:  # every other gap is real noise, levelled so it does not drown the speech
            src = noises[int(rng.integers(len(noises)))]
            if src.size < gap:
                src = np.tile(src, gap // src.size + 1)
            off = int(rng.integers(0, src.size - gap + 1))
            chunk = src[off : off + gap].copy()
            rms = float(np.sqrt(np.mean(chunk**2))) or 1e-9
            chunk *= 10 ** (NOISE_RMS_DBFS / 20) / rms
            parts.append(chunk.astype(np.float32))
            noise_s += gap / RATE
        else:
            parts.append(np.zeros(gap, dtype=np.float32))
            silence_s += gap / RATE
    audio = np.concatenate(parts)
    facts = {"utterances": len(speech), "speech_s": speech_s, "noise_s": noise_s, "silence_s": silence_s}
    return audio, " ".join(refs), facts


class CountingModel:
    """Stands in for a ``WhisperModel``'s CTranslate2 model and counts what is asked of it:
    encoder passes and decoded tokens. Everything else goes to the real model. Thread-safe: the
    replicas of the parallel path call it from several threads."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.encoder_passes = 0
        self.tokens = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, features, *args, **kwargs):
        with self._lock:
            self.encoder_passes += int(features.shape[0])
        return self._inner.encode(features, *args, **kwargs)

    def generate(self, *args, **kwargs):
        results = self._inner.generate(*args, **kwargs)
        with self._lock:
            self.tokens += sum(len(seq) for r in results for seq in r.sequences_ids)
        return results

    def take(self) -> tuple[int, int]:
        """Passes and tokens since the last call."""
        with self._lock:
            counts = (self.encoder_passes, self.tokens)
            self.encoder_passes = self.tokens = 0
        return counts


def counted(model) -> CountingModel:
    """Wrap ``model``'s CTranslate2 model in a :class:`CountingModel` (in place); returns it."""
    model.model = CountingModel(model.model)
    return model.model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--processes", action="store_true", help="also compare whole processes (model load included)")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    tuned = tune_allocator()  # as `speechpipe transcribe` does, before any model is loaded

    audio, reference, facts = build_long_file(args.seed)
    duration = audio.size / RATE
    tmp = Path(tempfile.mkdtemp(prefix="speechpipe-bench-"))
    wav = tmp / "long.wav"
    sf.write(wav, audio, RATE, subtype="PCM_16")
    print(
        f"long file: {duration:.1f} s ({facts['utterances']} utterances, {facts['speech_s']:.1f} s speech, "
        f"{facts['silence_s']:.1f} s silence gaps, {facts['noise_s']:.1f} s noise gaps), seed {args.seed}",
        file=sys.stderr,
    )

    asr = AsrConfig(beam_size=1, threads=args.threads, compute_type="int8", device="cpu")
    model = load_model(asr)
    counter = counted(model)
    engine = AsrEngine(asr, model=model)
    config = Config(asr=asr)
    pcm16 = sf.read(wav, dtype="float32")[0]  # the same samples the file holds
    # What `speechpipe transcribe` does by default: replicas of the model sized from the cores,
    # the file's windows on a pool of them while the file is still being read.
    par_config, _jobs = parallel_config(Config(asr=replace(asr, threads=0)), 0, args.threads)
    par_model = load_model(par_config.asr)
    par_counter = counted(par_model)
    par_engine = AsrEngine(par_config.asr, model=par_model)
    asr_pool = ThreadPoolExecutor(par_config.asr.workers)

    def speechpipe_inline() -> str:
        return transcribe_file(wav, config, engine).text

    def speechpipe() -> str:
        return transcribe_file(wav, par_config, par_engine, pool=asr_pool).text

    def faster_whisper(vad: bool, words: bool):
        def run() -> str:
            segments, _ = model.transcribe(pcm16, beam_size=1, language="en", vad_filter=vad, word_timestamps=words)
            return " ".join(s.text.strip() for s in segments)

        return run

    systems = {
        "speechpipe (default: windows on 2 replicas)": speechpipe,
        "speechpipe (inline, 2 threads)": speechpipe_inline,
        "faster-whisper vad_filter=False": faster_whisper(False, False),
        "faster-whisper vad_filter=True": faster_whisper(True, False),
        "faster-whisper vad_filter=False, words": faster_whisper(False, True),
        "faster-whisper vad_filter=True, words": faster_whisper(True, True),
    }
    speechpipe()  # warm-up: first-call allocations should not count for anyone
    speechpipe_inline()
    counter.take()
    par_counter.take()
    times: dict[str, list[float]] = {name: [] for name in systems}
    cpu: dict[str, list[float]] = {name: [] for name in systems}
    work: dict[str, tuple[int, int]] = {}
    texts: dict[str, str] = {}
    for _ in range(args.repeat):
        for name, fn in systems.items():
            c0, t0 = time.process_time(), time.perf_counter()
            texts[name] = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            passes, tokens = (par_counter if fn is speechpipe else counter).take()
            work[name] = (passes, tokens)  # the same every run: the decode is deterministic

    ref_name = "faster-whisper vad_filter=True"
    ref_wall = statistics.median(times[ref_name])
    print(
        f"\n{'system':44} {'wall s':>8} {'RTF':>7} {'WER %':>7} {'speed vs fw VAD':>16}"
        f" {'enc passes':>10} {'tokens':>7} {'CPU s/audio s':>13}"
    )
    for name in systems:
        wall = statistics.median(times[name])
        wer = score(reference, texts[name]).wer * 100
        passes, tokens = work[name]
        print(
            f"{name:44} {wall:8.2f} {wall / duration:7.4f} {wer:7.2f} {ref_wall / wall:15.2f}x"
            f" {passes:10d} {tokens:7d} {statistics.median(cpu[name]) / duration:13.4f}"
        )
    print(
        f"\n{duration:.1f} s audio; median of {args.repeat} interleaved runs; tiny.en int8, beam 1, {args.threads} threads;"
        f" allocator {'tuned' if tuned else 'as the system has it'}"
    )
    if args.processes:
        processes(wav, reference, duration, args)
    return 0


#: plain faster-whisper as its user would run it: the same bundled model, all cores, its VAD (with
#: a third argument ``tuned``: speechpipe's allocator tuning first, to show what that alone gives).
FW_SCRIPT = """
import sys
if sys.argv[3:] == ["tuned"]:
    from speechpipe.pipeline.offline.allocator import tune_allocator
    tune_allocator()
from faster_whisper import WhisperModel
from speechpipe.stages.asr.model import resolve_model
model = WhisperModel(resolve_model("tiny.en"), device="cpu", compute_type="int8", cpu_threads=int(sys.argv[2]))
segments, _ = model.transcribe(sys.argv[1], beam_size=1, language="en", vad_filter=True)
print(" ".join(s.text.strip() for s in segments))
"""


def processes(wav: Path, reference: str, duration: float, args) -> None:
    """Whole processes on the same file, interleaved: ``speechpipe transcribe`` (model load, file
    decode and outputs included) against a faster-whisper script with ``vad_filter=True``, each
    also with the allocator the other way (tuned or not); system CPU seconds shown apart."""
    out = wav.parent / "out"
    speechpipe = [sys.executable, "-m", "speechpipe.pipeline.cli", "transcribe", str(wav)]
    speechpipe += ["-o", str(out), "--force", "-q", "--no-progress"]
    fw = [sys.executable, "-c", FW_SCRIPT, str(wav), str(args.threads)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    untuned = {**env, "SPEECHPIPE_MALLOC_TUNING": "0"}
    runs = {
        "speechpipe transcribe (process)": (speechpipe, env),
        "speechpipe transcribe, allocator not tuned": (speechpipe, untuned),
        "faster-whisper vad_filter=True (process)": (fw, env),
        "faster-whisper vad_filter=True, allocator tuned": (fw + ["tuned"], env),
    }
    for cmd, run_env in runs.values():  # untimed: page cache, bytecode cache
        subprocess.run(cmd, cwd=ROOT, env=run_env, capture_output=True, check=True)
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    system: dict[str, list[float]] = {name: [] for name in runs}
    texts: dict[str, str] = {}
    rss: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, (cmd, run_env) in runs.items():
            wall, user_s, system_s, peak_mb, stdout = timed_process(cmd, run_env)
            times[name].append(wall)
            cpu[name].append(user_s + system_s)
            system[name].append(system_s)
            rss[name].append(peak_mb)
            texts[name] = stdout if "faster" in name else json.loads((out / "long.wav.json").read_text())["text"]
    ref_wall = statistics.median(times["faster-whisper vad_filter=True (process)"])
    print(
        f"\n{'whole process':47} {'wall s':>8} {'RTF':>7} {'WER %':>7} {'speed vs fw VAD':>16}"
        f" {'CPU s/audio s':>13} {'system CPU s':>12} {'peak RSS MB':>11}"
    )
    for name in runs:
        wall = statistics.median(times[name])
        wer = score(reference, texts[name]).wer * 100
        per_audio = statistics.median(cpu[name]) / duration
        print(
            f"{name:47} {wall:8.2f} {wall / duration:7.4f} {wer:7.2f} {ref_wall / wall:15.2f}x"
            f" {per_audio:13.4f} {statistics.median(system[name]):12.2f} {statistics.median(rss[name]):11.0f}"
        )


def timed_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, float, str]:
    """Run ``cmd`` to its end: its wall seconds, user and system CPU seconds, peak RSS in MB and
    its standard output. The peak is the process's own ``VmHWM``, read every 20 ms while it
    runs: ``wait4``'s ``ru_maxrss`` would report this benchmark's own size, since the child
    began as a copy of it (fork, or vfork on Linux) before its ``exec``."""
    peak = [0]

    def watch(pid: int, done: threading.Event) -> None:
        while not done.wait(0.02):
            try:
                with open(f"/proc/{pid}/status") as f:
                    hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
            except (OSError, ValueError):
                continue
            peak[0] = max(peak[0], hwm)

    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True)
        done = threading.Event()
        watcher = threading.Thread(target=watch, args=(proc.pid, done), daemon=True)
        watcher.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        watcher.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd, stdout.read(), stderr.read())
        return wall, usage.ru_utime, usage.ru_stime, peak[0] / 1024, stdout.read()


if __name__ == "__main__":
    sys.exit(main())
