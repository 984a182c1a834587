"""One Whisper pass per packed window, optionally several windows per batch.

``WhisperModel.transcribe`` treats its input as a long recording: when the decoded text stops
before the end of the audio it seeks there and encodes a fresh 30 s window for the remainder. For
our packed windows that remainder is usually the trailing post-roll of the last segment, so the
encoder (the dominant cost on CPU) would run twice for one window. This decoder encodes each
window exactly once, decodes it with timestamps, falls back to higher temperatures like Whisper
when a decode fails its checks (but not on windows that look like silence), goes on from where a
decode stopped early on the same encoder output (:meth:`WindowDecoder._continue`), and aligns
words. Pieces that even that missed are retried by :class:`~speechpipe.stages.asr.engine.AsrEngine`.

It builds on faster-whisper's model helpers (prompt, timestamp splitting, word alignment), which is
why ``pyproject.toml`` pins faster-whisper to the 1.x series this was written against.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from speechpipe.stages.asr.types import Decoding, Word

N_FRAMES = 3000  # Whisper's 30 s window in mel frames
#: the temperature fallback samples; seeding every batch makes transcripts reproducible run to run.
SAMPLING_SEED = 20240601
#: decodes on from where Whisper stopped early, per window, and the audio left that asks for one (s)
MAX_CONTINUATIONS = 2
CONTINUE_MIN_S = 1.0
#: the longest decode of a window read with a short context: this many tokens, and this many per
#: second of its audio (speech is about 4 tokens a second, timestamps included; a loop is many more)
TOKENS_BASE = 16
TOKENS_PER_S = 8.0


@dataclass
class DecodedSegment:
    """A Whisper segment in window time (seconds from the window start)."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    words: list[Word] = field(default_factory=list)


class WindowDecoder:
    """Decodes windows of at most 30 s with a faster-whisper ``WhisperModel``.

    ``context_s``: the encoder reads each window decoded once (``resume`` False: live calls) as
    its audio and this many seconds of silence after it instead of Whisper's full 30 s (0: the
    full window); windows decoded on (``resume``) read the full 30 s. The encoder's cost grows with
    what it reads (its attention quadratically): tiny.en on one core encodes 30 s in 0.56 s and
    10 s in 0.07 s, so a live final of a few seconds pays a fraction of a pass
    (``AsrConfig.context_s``).
    """

    def __init__(
        self,
        model,
        *,
        language: str | None,
        beam_size: int,
        temperatures: tuple[float, ...],
        compression_ratio_threshold: float,
        logprob_threshold: float,
        no_speech_threshold: float,
        context_s: float = 0.0,
    ) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import TranscriptionOptions

        self.model = model
        self.context_s = context_s
        multilingual = model.model.is_multilingual
        self.tokenizer = Tokenizer(
            model.hf_tokenizer, multilingual, task="transcribe", language=(language or "en") if multilingual else None
        )
        self.options = TranscriptionOptions(
            beam_size=beam_size,
            best_of=5,
            patience=1.0,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            log_prob_threshold=logprob_threshold,
            # Used only to stop the temperature fallback on windows that look like silence.
            no_speech_threshold=no_speech_threshold,
            compression_ratio_threshold=compression_ratio_threshold,
            condition_on_previous_text=False,
            prompt_reset_on_temperature=0.5,
            temperatures=list(temperatures),
            initial_prompt=None,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=_suppress_tokens(self.tokenizer),
            without_timestamps=False,
            max_initial_timestamp=1.0,
            word_timestamps=True,
            prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、",
            multilingual=False,
            max_new_tokens=None,
            clip_timestamps="0",
            hallucination_silence_threshold=None,
            hotwords=None,
        )
        self.prompt = model.get_prompt(self.tokenizer, [], without_timestamps=False)
        self._prompts: dict[str, list[int]] = {"": self.prompt}
        self.time_per_frame = model.feature_extractor.time_per_frame

    def decode(
        self,
        audios: list[np.ndarray],
        batch_size: int = 1,
        decoding: Decoding | None = None,
        resume: bool = True,
    ) -> list[list[DecodedSegment]]:
        """Decode each window (16 kHz mono, at most 30 s); returns each window's segments.
        ``decoding``: the prompt and first temperature of every window. ``resume``: a decode that
        stops early goes on from the same encoder output (:meth:`_continue`)."""
        decoding = decoding or Decoding()
        prompt = self._prompt(decoding.prompt, decoding.prefix)
        opts = self.options
        if decoding.temperature > 0:
            opts = replace(opts, temperatures=list(decoding.temperatures(tuple(opts.temperatures))))
        out: list[list[DecodedSegment]] = []
        for i in range(0, len(audios), max(1, batch_size)):
            out.extend(self._decode_batch(audios[i : i + batch_size], prompt, opts, resume))
        return out

    def _bounded(self, opts, size: int, prompt: list[int]):
        """``opts`` with the decode's length bounded by the audio where the encoder reads a short
        context (``context_s``): a decode that loops there is cut at :data:`TOKENS_BASE` +
        :data:`TOKENS_PER_S` tokens per second of audio instead of running to Whisper's 448, each
        time the temperature fallback tries again."""
        if self.context_s <= 0:
            return opts
        bound = TOKENS_BASE + round(TOKENS_PER_S * size * self.time_per_frame)
        return replace(opts, max_new_tokens=min(bound, self.model.max_length - len(prompt)))

    def context_frames(self, size: int) -> int:
        """The mel frames the encoder reads for a window of ``size`` frames of audio: Whisper's
        full 30 s, or the audio and ``context_s`` seconds of silence after it (an even count: the
        encoder halves it)."""
        if self.context_s <= 0:
            return N_FRAMES
        frames = min(N_FRAMES, size + round(self.context_s / self.time_per_frame))
        return frames + frames % 2

    def _prompt(self, text: str, prefix: str = "") -> list[int]:
        """Whisper's prompt tokens with ``text`` as the previous text (as its ``initial_prompt``)
        and ``prefix`` as the words the decode must begin with (after the start of transcript and
        a first timestamp, as faster-whisper puts them; CTranslate2 returns them as part of the
        result, so they are split into segments and aligned like the words decoded after them).
        Prompts are cached per text; prefixes, a live segment's own, are not."""
        if prefix.strip():
            previous = self.tokenizer.encode(" " + text.strip()) if text else []
            return self.model.get_prompt(self.tokenizer, previous, without_timestamps=False, prefix=prefix.strip())
        if text not in self._prompts:
            if len(self._prompts) > 64:  # one per distinct client prompt: keep it bounded
                self._prompts = {"": self.prompt}
            previous = self.tokenizer.encode(" " + text.strip())
            self._prompts[text] = self.model.get_prompt(self.tokenizer, previous, without_timestamps=False)
        return self._prompts[text]

    def _decode_batch(
        self, audios: list[np.ndarray], prompt: list[int], opts, resume: bool
    ) -> list[list[DecodedSegment]]:
        import ctranslate2
        from faster_whisper.audio import pad_or_trim

        m, tok = self.model, self.tokenizer
        ctranslate2.set_random_seed(SAMPLING_SEED)
        sizes: list[int] = []
        mels = []
        for audio in audios:
            f = m.feature_extractor(audio)
            size = min(N_FRAMES, max(1, f.shape[-1] - 1))
            sizes.append(size)
            mels.append(pad_or_trim(f[:, :size]))
        # A short context is for windows decoded once (live calls). A window decoded on from where
        # Whisper stopped (offline, uploads) reads the full 30 s: from a timestamp near the end of
        # a short context the continuation began the window again (JFK's cut segments came out
        # twice, tests/test_attribution.py).
        frames = N_FRAMES if resume else self.context_frames(max(sizes))
        feats = [np.ascontiguousarray(f[:, :frames]) for f in mels]
        encoder_output = m.encode(np.stack(feats))

        if len(audios) == 1:
            first = opts if resume else self._bounded(opts, sizes[0], prompt)
            decoded = [m.generate_with_fallback(encoder_output, prompt, tok, first)]
        elif opts.temperatures[0] > 0:  # sampling from the start: each window on its own
            decoded = [m.generate_with_fallback(m.encode(f[None]), prompt, tok, opts) for f in feats]
        else:
            decoded = self._generate_batch(encoder_output, len(audios), prompt, opts)
            # A window that fails Whisper's checks at temperature 0 is decoded again on its own,
            # with the full temperature fallback.
            for k, (result, avg_logprob, _t, ratio) in enumerate(decoded):
                if self._needs_fallback(result.no_speech_prob, avg_logprob, ratio):
                    single = m.encode(feats[k][None])
                    decoded[k] = m.generate_with_fallback(single, prompt, tok, opts)

        # Each window's decodes: the first, then any continuations (tokens, no_speech, logprob, T).
        runs = [
            [(list(result.sequences_ids[0]), result.no_speech_prob, avg_logprob, temperature)]
            for result, avg_logprob, temperature, _ratio in decoded
        ]
        if resume:
            self._continue(encoder_output, runs, sizes, prompt, opts)

        return self._segments(runs, sizes, encoder_output, opts)

    def _segments(self, runs: list[list[tuple]], sizes: list[int], encoder_output, opts) -> list[list[DecodedSegment]]:
        """Each window's decodes (tokens, no_speech, avg_logprob, temperature) as segments in
        window time, with word times aligned on ``encoder_output`` (one row per window)."""
        m, tok = self.model, self.tokenizer
        windows: list[list[dict]] = []
        for window_runs, size in zip(runs, sizes):
            segments = []
            for tokens, no_speech, avg_logprob, temperature in window_runs:
                split, _seek, _single = m._split_segments_by_timestamps(
                    tokenizer=tok,
                    tokens=tokens,
                    time_offset=0.0,
                    segment_size=size,
                    segment_duration=size * self.time_per_frame,
                    seek=0,
                )
                for s in split:
                    s["seek"] = 0
                    s["meta"] = (no_speech, avg_logprob, temperature)
                segments += split
            windows.append(segments)
        full = [k for k, w in enumerate(windows) if w]
        if full:
            # faster-whisper aligns every window it is given and cannot take one without
            # segments: where some are empty, only the others' rows are aligned (on the CPU).
            rows = encoder_output if len(full) == len(windows) else _rows(encoder_output, full, len(windows))
            if rows is None:
                rows, full = encoder_output, list(range(len(windows)))
            m.add_word_timestamps(
                [windows[k] for k in full],
                tok,
                rows,
                [sizes[k] for k in full],
                opts.prepend_punctuations,
                opts.append_punctuations,
                0.0,
            )

        out: list[list[DecodedSegment]] = []
        for segments in windows:
            items = []
            for s in segments:
                no_speech, avg_logprob, temperature = s["meta"]
                text = tok.decode(s["tokens"])
                words = [
                    Word(float(w["start"]), float(w["end"]), w["word"], float(w["probability"]))
                    for w in s.get("words") or []
                ]
                items.append(
                    DecodedSegment(
                        start=float(s["start"]),
                        end=float(s["end"]),
                        text=text,
                        avg_logprob=float(avg_logprob),
                        no_speech_prob=float(no_speech),
                        compression_ratio=float(get_compression_ratio(text)),
                        temperature=float(temperature),
                        words=words,
                    )
                )
            out.append(items)
        return out

    def _continue(self, encoder_output, runs: list[list[tuple]], sizes: list[int], prompt: list[int], opts) -> None:
        """Decode on from where Whisper stopped, on the same encoder output.

        Whisper sometimes ends a packed window early: it emits end-of-text after one piece, or in
        the middle of the last. Its own remedy is to seek there and encode a new window (one more
        encoder pass, the dominant cost on CPU). The window's encoder output already holds that
        audio, so the decode is started again with the last timestamp it reached as its first
        token, which makes Whisper transcribe from that point. A continuation is kept when it gets
        further and passes Whisper's checks; whatever is still missed is left to the engine's
        retry in a window of its own. Windows whose encoder outputs cannot be taken apart (a batch
        on a GPU) are left to that retry too.
        """
        tok, m = self.tokenizer, self.model
        begin = tok.timestamp_begin
        for k, window_runs in enumerate(runs):
            encoded = None
            for _ in range(MAX_CONTINUATIONS):
                tokens = window_runs[-1][0]
                last = max((i for i, t in enumerate(tokens) if t >= begin), default=None)
                if last is None or not any(t < tok.eot for t in tokens):
                    break
                position = tokens[last] - begin
                if sizes[k] * self.time_per_frame - position * m.time_precision <= CONTINUE_MIN_S:
                    break
                if encoded is None:
                    encoded = _row(encoder_output, k, len(runs))
                    if encoded is None:
                        break
                # One window at a time: Whisper's batched generate wants every prompt the same
                # length, and each window's text so far is its own. Continuations are rare.
                [result] = self._generate(
                    encoded, [self._continuation_prompt(prompt, window_runs, last) + [begin + position]], opts
                )
                continued = self._continuation(result, position, sizes[k], opts)
                if continued is None:
                    break
                new_tokens, avg_logprob = continued
                # the text the first decode left unfinished is decoded again by the continuation
                window_runs[-1] = (tokens[: last + 1], *window_runs[-1][1:])
                window_runs.append((new_tokens, result.no_speech_prob, avg_logprob, 0.0))

    def _continuation(self, result, position: int, size: int, opts) -> tuple[list[int], float] | None:
        """A continuation's tokens (from its first timestamp, closed by a last one) and their
        average log-probability, or None where it got no further or fails Whisper's checks."""
        tok, begin = self.tokenizer, self.tokenizer.timestamp_begin
        tokens = list(result.sequences_ids[0])
        if tokens[:1] != [begin + position]:  # the prefix is part of the result
            tokens = [begin + position] + tokens
        text = [t for t in tokens if t < tok.eot]
        if tokens[-1] < begin:  # text to the end: closed at the end of the window's audio
            end = min(round(size * self.time_per_frame / self.model.time_precision), N_FRAMES // 2)
            tokens.append(begin + max(end, position + 1))
        stamps = [t - begin for t in tokens if t >= begin]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        ratio = get_compression_ratio(tok.decode(text).strip()) if text else 0.0
        if (
            not text
            or max(stamps) <= position
            or avg_logprob < opts.log_prob_threshold
            or ratio > opts.compression_ratio_threshold
        ):
            return None
        return tokens, avg_logprob

    def _continuation_prompt(self, prompt: list[int], window_runs: list[tuple], last: int) -> list[int]:
        """``prompt`` with the window's text so far added to its previous text, as Whisper's own
        seek would have it: without it, a decode started in mid-sentence goes astray."""
        tok = self.tokenizer
        previous = prompt[1 : prompt.index(tok.sot)] if prompt and prompt[0] == tok.sot_prev else []
        for k, (tokens, *_meta) in enumerate(window_runs):
            kept = tokens[: last + 1] if k == len(window_runs) - 1 else tokens
            previous += [t for t in kept if t < tok.eot]
        return self.model.get_prompt(tok, previous, without_timestamps=False)

    def _generate(self, encoder_output, prompts: list[list[int]], opts, **extra) -> list:
        """CTranslate2's Whisper generate with the decoding options every decode here shares."""
        return self.model.model.generate(
            encoder_output,
            prompts,
            beam_size=opts.beam_size,
            patience=opts.patience,
            length_penalty=opts.length_penalty,
            max_length=self.model.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=opts.suppress_blank,
            suppress_tokens=opts.suppress_tokens,
            **extra,
        )

    def _generate_batch(self, encoder_output, n: int, prompt: list[int], opts) -> list[tuple]:
        tok = self.tokenizer
        results = self._generate(
            encoder_output,
            [list(prompt) for _ in range(n)],
            opts,
            max_initial_timestamp_index=round(opts.max_initial_timestamp / self.time_per_frame / 2),
        )
        decoded = []
        for result in results:
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            ratio = get_compression_ratio(tok.decode(tokens).strip())
            decoded.append((result, avg_logprob, opts.temperatures[0], ratio))
        return decoded

    def _needs_fallback(self, no_speech_prob: float, avg_logprob: float, ratio: float) -> bool:
        opts = self.options
        failed = ratio > opts.compression_ratio_threshold or avg_logprob < opts.log_prob_threshold
        silence = no_speech_prob > opts.no_speech_threshold and avg_logprob < opts.log_prob_threshold
        return failed and not silence and len(opts.temperatures) > 1


def get_compression_ratio(text: str) -> float:
    """Whisper's check for repetition loops (gzip ratio of the text), as faster-whisper has it."""
    from faster_whisper.transcribe import get_compression_ratio as ratio

    return ratio(text)


def _rows(encoder_output, keep: list[int], n: int):
    """The encoder outputs of windows ``keep`` of a batch of ``n``; None where they stay on a
    device they cannot be copied from."""
    if len(keep) == 1:
        return _row(encoder_output, keep[0], n)
    if str(encoder_output.device) != "cpu":
        return None
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoder_output)[keep]))


def _row(encoder_output, k: int, n: int):
    """The encoder output of window ``k`` of a batch of ``n``; None where it stays on a device it
    cannot be copied from."""
    if n == 1:
        return encoder_output
    if str(encoder_output.device) != "cpu":
        return None
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoder_output)[k : k + 1]))


def _suppress_tokens(tokenizer) -> list[int]:
    """Whisper's default suppression set (``[-1]`` expanded), as faster-whisper computes it."""
    from faster_whisper.transcribe import get_suppressed_tokens

    return get_suppressed_tokens(tokenizer, [-1])
