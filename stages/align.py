"""Forced alignment of a known text to audio with Whisper's cross-attention (faster-whisper).

Whisper's word timestamps are not a separate model: after decoding, faster-whisper runs the decoder
once more over the decoded tokens and aligns them to the encoder frames by dynamic time warping on
the cross-attention weights of its alignment heads (``WhisperModel.find_alignment``). Handing that
step a *reference* text instead of the decoded one gives every reference word a time, including
the words the recognizer would have got wrong: a forced alignment, with the same accuracy as
Whisper's own word timestamps. The evaluation uses it to place reference words in time
(:mod:`speechpipe.pipeline.evaluate.quality.attribution`).

One call aligns at most one 30 s window (Whisper's input); longer audio is aligned window by
window by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from speechpipe.stages.pcm import SAMPLE_RATE

WINDOW_S = 30.0


@dataclass
class AlignedWord:
    """A word of the aligned text (Whisper's word split: leading space kept, punctuation may stand
    alone) with its time in seconds of the stream and its mean token probability."""

    word: str
    start: float
    end: float
    probability: float


class ForcedAligner:
    """Aligns text to audio with a loaded faster-whisper ``WhisperModel``.

    Synchronous and stateless between calls; share the model with the ASR engine.
    """

    def __init__(self, model, language: str | None = "en") -> None:
        from faster_whisper.tokenizer import Tokenizer

        self.model = model
        is_multilingual = model.model.is_multilingual
        self.tokenizer = Tokenizer(
            model.hf_tokenizer,
            is_multilingual,
            task="transcribe",
            language=(language or "en") if is_multilingual else "en",
        )

    def align(self, audio: np.ndarray, text: str, offset_s: float = 0.0) -> list[AlignedWord]:
        """Align ``text`` to ``audio`` (16 kHz mono float32, at most 30 s); times are offset by
        ``offset_s``. Empty text or audio gives no words."""
        from faster_whisper.audio import pad_or_trim

        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size > WINDOW_S * SAMPLE_RATE + 1:
            raise ValueError(
                f"forced alignment takes at most {WINDOW_S:.0f} s of audio per call, got {audio.size / SAMPLE_RATE:.1f} s"
            )
        text = " ".join(text.split())
        if not text or audio.size == 0:
            return []
        tokens = self.tokenizer.encode(" " + text)
        fe = self.model.feature_extractor
        features = fe(audio)
        num_frames = min(features.shape[-1] - 1, fe.nb_max_frames)
        encoder_output = self.model.encode(pad_or_trim(features[:, :num_frames]))
        (alignment,) = self.model.find_alignment(self.tokenizer, [tokens], encoder_output, num_frames)
        duration = audio.size / SAMPLE_RATE
        return [
            AlignedWord(
                word=w["word"],
                start=offset_s + min(float(w["start"]), duration),
                end=offset_s + min(float(w["end"]), duration),
                probability=float(w["probability"]),
            )
            for w in alignment
            if w["word"]
        ]
