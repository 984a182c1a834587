"""webrtcvad versus Silero on the labelled VAD clips: frame F1 and cost, side by side in one run.

Two views per backend, both at 10 ms frames against the human labels of ../shared/corpus/vad,
pooled over all clips:

* *classifier*: the raw per-frame speech decisions (webrtcvad 30 ms frames at the configured
  aggressiveness; Silero 32 ms frames with its hysteresis);
* *segmenter*: the segments the pipeline actually sends to ASR (pre-roll, trigger, hangover,
  post-roll, minimum speech), with the default segmenter settings.

    python benchmarks/vad_backends.py [--clips ../shared/corpus/vad]

Also prints the CPU time per second of audio of each classifier (one thread, same run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from machine import machine_line

from speechpipe.pipeline.evaluate.quality.vad_metrics import pooled_score, read_segments
from speechpipe.stages.audio import load_audio
from speechpipe.stages.pcm import SAMPLE_RATE
from speechpipe.stages.vad import SpeechSegment, VadConfig, VadSegmenter, make_classifier

HERE = Path(__file__).resolve().parent
DEFAULT_CLIPS = HERE.parent.parent / "shared" / "corpus" / "vad"

BACKENDS = {
    "webrtc a0": VadConfig(backend="webrtc", aggressiveness=0),
    "webrtc a1": VadConfig(backend="webrtc", aggressiveness=1),
    "webrtc a2": VadConfig(backend="webrtc"),
    "webrtc a3": VadConfig(backend="webrtc", aggressiveness=3),
    "silero t0.5 (default)": VadConfig(backend="silero"),
}


def frames_to_intervals(flags: list[bool], frame_samples: int) -> list[tuple[float, float]]:
    out, start = [], None
    for i, f in enumerate(flags + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start * frame_samples / SAMPLE_RATE, i * frame_samples / SAMPLE_RATE))
            start = None
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", default=str(DEFAULT_CLIPS))
    args = p.parse_args()
    print(machine_line(), flush=True)
    clips = []
    for wav in sorted(Path(args.clips).glob("*.wav")):
        labels = wav.with_suffix(".segments.txt")
        if labels.exists():
            audio, _ = load_audio(wav)
            clips.append((audio, read_segments(labels)))
    audio_s = sum(a.size for a, _ in clips) / SAMPLE_RATE
    print(f"{len(clips)} labelled clips, {audio_s:.1f} s of audio")
    print(f"{'backend':20s} {'view':10s} {'P':>6s} {'R':>6s} {'F1':>6s}  {'CPU s per audio s':>17s}")
    for name, cfg in BACKENDS.items():
        raw, seg = [], []
        cpu = 0.0
        for audio, labels in clips:
            clf = make_classifier(cfg)
            fs = clf.frame_samples
            t0 = time.process_time()
            flags = [bool(clf.is_speech(audio[i : i + fs])) for i in range(0, audio.size - fs + 1, fs)]
            cpu += time.process_time() - t0
            raw.append((frames_to_intervals(flags, fs), labels, audio.size / SAMPLE_RATE))
            vad = VadSegmenter(cfg)
            events = vad.feed(audio) + vad.flush()
            seg.append(
                (
                    [(e.start_s, e.end_s) for e in events if isinstance(e, SpeechSegment)],
                    labels,
                    audio.size / SAMPLE_RATE,
                )
            )
        for view, pairs in (("classifier", raw), ("segmenter", seg)):
            s = pooled_score(pairs)
            cost = f"{cpu / audio_s:17.4f}" if view == "classifier" else ""
            print(f"{name:20s} {view:10s} {s.precision:6.3f} {s.recall:6.3f} {s.f1:6.3f}  {cost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
