"""Silero VAD as a streaming frame classifier, on the ONNX model that faster-whisper ships.

faster-whisper bundles Silero VAD v6 as ``faster_whisper/assets/silero_vad_v6.onnx`` and runs it
with ``onnxruntime`` (already one of its dependencies), so this backend adds nothing to install.

The model's contract, as used by ``faster_whisper.vad.SileroVADModel``:

* input ``input``: float32 of shape ``(n, 576)``: ``n`` frames of 512 samples at 16 kHz (32 ms),
  each prefixed with the last 64 samples of the frame before it (zeros before the first frame);
* inputs ``h`` and ``c``: the LSTM state, float32 ``(1, 1, 128)`` each, zeros at the start of a
  stream;
* outputs ``speech_probs`` (one probability per frame), ``hn`` and ``cn`` (the state after the last
  frame).

The ``n`` frames form a time sequence through the LSTM, so running frames one at a time while
carrying the context and state gives exactly the probabilities of one batched call over the whole
file; that is what makes the classifier streamable and chunk-size independent.

A frame counts as speech with Silero's own hysteresis: it turns speech when the probability reaches
``threshold`` and stays speech until the probability drops below ``neg_threshold`` (by default
``threshold - 0.15``, as in Silero and faster-whisper).
"""

from __future__ import annotations

import functools
import os

import numpy as np

FRAME_SAMPLES = 512
CONTEXT_SAMPLES = 64
STATE_SHAPE = (1, 1, 128)
MODEL_FILE = "silero_vad_v6.onnx"


def model_path() -> str:
    """Path of the Silero ONNX model inside the installed faster-whisper."""
    from faster_whisper.utils import get_assets_path

    return os.path.join(get_assets_path(), MODEL_FILE)


@functools.lru_cache(maxsize=4)
def _session(path: str):
    """One onnxruntime session per model file, shared by every classifier (``run`` is thread-safe;
    the per-stream state lives in the classifier, not in the session)."""
    import onnxruntime

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Silero VAD model not found: {path}")
    opts = onnxruntime.SessionOptions()
    # One frame per call is tiny work: more threads only add synchronisation cost.
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=opts)


class SileroClassifier:
    """Streaming Silero VAD: implements :class:`speechpipe.stages.vad.classifiers.FrameClassifier`.

    Args:
        threshold: speech probability at which a frame turns speech.
        neg_threshold: probability below which speech turns back to non-speech (hysteresis);
            ``threshold - 0.15`` (at least 0.01) when not given.
        path: ONNX model file; the one bundled with faster-whisper by default.

    Each instance holds one stream's state (LSTM state, 64-sample context, hysteresis);
    :meth:`reset` starts a new stream.
    """

    frame_samples = FRAME_SAMPLES

    def __init__(self, threshold: float = 0.5, neg_threshold: float | None = None, path: str | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must lie between 0 and 1")
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01) if neg_threshold is None else neg_threshold
        if not 0.0 <= self.neg_threshold <= threshold:
            raise ValueError("neg_threshold must lie between 0 and threshold")
        self._session = _session(path or model_path())
        self.last_probability = 0.0
        self.reset()

    def reset(self) -> None:
        """Forget the stream: zero LSTM state and context, non-speech."""
        self._h = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._speaking = False
        self.last_probability = 0.0

    def probability(self, frame: np.ndarray) -> float:
        """Speech probability of the next 512-sample frame of the stream (advances the state)."""
        x = np.asarray(frame, dtype=np.float32).reshape(-1)
        if x.size != FRAME_SAMPLES:
            raise ValueError(f"Silero frames are {FRAME_SAMPLES} samples at 16 kHz, got {x.size}")
        batch = np.concatenate([self._context, x])[None, :]
        prob, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = x[-CONTEXT_SAMPLES:].copy()
        self.last_probability = float(prob.reshape(-1)[0])
        return self.last_probability

    def probabilities(self, frames: np.ndarray) -> np.ndarray:
        """Speech probabilities of the next ``n`` frames (shape ``(n, 512)``) in one model call: the
        LSTM runs over them as the time sequence they are, so this equals ``n`` calls of
        :meth:`probability` at a fraction of the overhead (a file's 5 s block is 156 frames)."""
        x = np.asarray(frames, dtype=np.float32).reshape(-1, FRAME_SAMPLES)
        if x.shape[0] == 0:
            return np.zeros(0, np.float32)
        contexts = np.concatenate([self._context[None, :], x[:-1, -CONTEXT_SAMPLES:]])
        batch = np.concatenate([contexts, x], axis=1)
        prob, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = x[-1, -CONTEXT_SAMPLES:].copy()
        probs = prob.reshape(-1).astype(np.float32)
        self.last_probability = float(probs[-1])
        return probs

    def is_speech(self, frame: np.ndarray) -> bool:
        """Whether the next frame is speech (probability with hysteresis)."""
        return self._decide(self.probability(frame))

    def classify(self, frames: np.ndarray) -> list[bool]:
        """Whether each of the next frames (shape ``(n, 512)``) is speech; one model call."""
        return [self._decide(float(p)) for p in self.probabilities(frames)]

    def _decide(self, p: float) -> bool:
        if p >= self.threshold:
            self._speaking = True
        elif p < self.neg_threshold:
            self._speaking = False
        return self._speaking
