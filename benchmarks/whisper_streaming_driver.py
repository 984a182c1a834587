"""Runs the PyPI ``whisper-streaming`` package (a rework of ÚFAL's whisper_streaming: its
LocalAgreement over a growing audio buffer) on streams in simulated real time, for
``benchmarks/partials.py --whisper-streaming PYTHON``. Run by that interpreter, not speechpipe's:
the package pins faster-whisper 1.1.1 and needs its own environment (docs/benchmarks.md says how).

    PYTHON whisper_streaming_driver.py STREAMS.npz MODEL_DIR  ->  JSON on stdout

Each stream is fed 1 s chunks as they would arrive (whisper_streaming's ``min-chunk-size``); a
chunk is processed once it has arrived and the previous one is done, with every chunk that arrived
meanwhile (as its online loop does). Each word it commits is written with the stream time it was
emitted at: when its chunk arrived or the processor got free, plus the measured processing time.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from whisper_streaming import processor as wsp
from whisper_streaming.backend import faster_whisper_backend as fwb
from whisper_streaming.base import Backend

RATE = 16000
CHUNK_S = 1.0


class _Idle(wsp.AudioReceiver):
    """The processor wants a receiver; chunks are handed to it directly here."""

    def _do_receive(self):
        return None

    def _do_close(self) -> None:
        pass


class _Discard(wsp.OutputSender):
    def _do_output(self, data) -> None:
        pass

    def _do_close(self) -> None:
        pass


def run(audio: np.ndarray, model_dir: str) -> list[dict]:
    proc = wsp.ASRProcessor(
        wsp.ASRProcessor.ProcessorConfig(
            sampling_rate=RATE,
            prompt_size=200,
            audio_receiver_timeout=1.0,
            audio_trimming=wsp.TimeTrimming(15),
            language="en",
        ),
        _Idle(),
        [_Discard()],
        Backend.FASTER_WHISPER,
        fwb.FasterWhisperModelConfig(model_size_or_path=model_dir, device="cpu", compute_type="int8"),
        fwb.FasterWhisperTranscribeConfig(beam_size=1),  # greedy, as speechpipe's live decodes
        fwb.FasterWhisperFeatureExtractorConfig(),
    )
    words: list[dict] = []
    step = int(CHUNK_S * RATE)
    done_at, taken = 0.0, 0
    while taken < audio.size:
        arrived = min(audio.size, max(taken + step, int(done_at * RATE)))  # all that came meanwhile
        start = max(arrived / RATE, done_at)
        t0 = time.perf_counter()
        out = proc._process(audio[taken:arrived])
        done_at = start + time.perf_counter() - t0
        taken = arrived
        if out is not None:
            words.append({"emitted": done_at, "start": out.start, "end": out.end, "text": out.word})
    rest = proc._transcription_buffer.transcriptions_in_limbo  # flushed at the end of the stream
    if rest:
        text = "".join(w.word for w in rest)
        words.append({"emitted": done_at, "start": rest[0].start, "end": rest[-1].end, "text": text})
    return words


def main() -> int:
    streams = np.load(sys.argv[1])
    out = [run(streams[k].astype(np.float32), sys.argv[2]) for k in sorted(streams.files)]
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
