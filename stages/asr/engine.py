"""ASR stage: one shared faster-whisper model, transcription of VAD segments into dataclasses.

:class:`AsrEngine` transcribes a list of :class:`AudioPiece` (speech segments of one stream) in as
few Whisper calls as possible: Whisper pays a full 30 s encoder pass per call whatever the audio
length, so consecutive pieces are packed into windows of up to ``AsrConfig.window_s`` seconds
(:mod:`~speechpipe.stages.asr.packing`), separated by short silences, and the words are mapped
back to the piece they fell in (:mod:`~speechpipe.stages.asr.windows`). Times in the results are
stream times (seconds since the start of the stream). The hallucination guard
(:mod:`~speechpipe.stages.asr.guard`) drops segments that look like the model talking over noise;
drops are counted on each result.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import replace

import numpy as np

from speechpipe.stages.asr.config import AsrConfig
from speechpipe.stages.asr.model import ModelLoadError, load_checked, load_model, resolve_device
from speechpipe.stages.asr.packing import pack_items
from speechpipe.stages.asr.types import AsrRun, AudioPiece, Decoding, Transcript, WindowStats
from speechpipe.stages.asr.windows import assemble, map_window, merge

#: retries of audio a decode did not reach, even going on from where it stopped (each retry gives
#: every miss a window of its own).
MAX_PACK_ATTEMPTS = 2

Decoded = tuple[list[Transcript], WindowStats, list[AudioPiece | None], list[bool]]


class AsrEngine:
    """Transcribes audio pieces with a shared faster-whisper model. Synchronous and thread-safe
    to the extent CTranslate2 is (one call at a time per engine is the intended use)."""

    def __init__(self, config: AsrConfig | None = None, model=None, *, background: bool = False) -> None:
        """``model``: an already loaded faster-whisper model; otherwise the one ``config`` names is
        loaded now, or, with ``background``, in a thread of its own while the caller goes on (a
        file is read and segmented meanwhile); the first use of :attr:`model` then waits for it,
        and a load that failed raises :class:`ModelLoadError` there."""
        self.config = config or AsrConfig()
        self.device, self.compute_type = resolve_device(self.config.device, self.config.compute_type)
        self._model = model
        self._loading: Future | None = None
        if model is None and background:
            self._loading = self._load_in_background()
        elif model is None:
            self._model = load_model(self.config)
        self.model_name = self.config.model
        self._window_decoder = None
        self._decoder_lock = threading.Lock()  # several workers may share one engine

    @property
    def model(self):
        """The faster-whisper model (waits for a background load to finish)."""
        if self._model is None and self._loading is not None:
            self._model = self._loading.result()
        return self._model

    @model.setter
    def model(self, value) -> None:
        self._model = value

    def wait_loaded(self) -> None:
        """Wait for a background load; raises :class:`ModelLoadError` if it failed."""
        _ = self.model

    def _load_in_background(self) -> Future:
        done: Future = Future()
        config = self.config

        def load() -> None:
            try:
                done.set_result(load_checked(config))
            except ModelLoadError as exc:
                done.set_exception(exc)

        threading.Thread(target=load, name="asr-load", daemon=True).start()
        return done

    def pack(self, pieces: list[AudioPiece]) -> list[list[AudioPiece]]:
        """Group pieces, in stream order, into windows of at most ``window_s`` (gaps included), as
        :func:`~speechpipe.stages.asr.packing.pack_windows` fills them."""
        return pack_items(pieces, [p.duration_s for p in pieces], self.config.window_s, self.config.gap_s)

    def run(
        self, groups: list[list[AudioPiece]], decoding: Decoding | None = None, resume: bool = True
    ) -> list[tuple[list[Transcript], AsrRun]]:
        """:meth:`transcribe_groups`, with how the call ran: one :class:`AsrRun` per group, all
        sharing the call's wall-clock times (each with its own windows)."""
        started = time.time_ns()
        results = self.transcribe_groups(groups, decoding, resume)
        ended = time.time_ns()
        return [
            (
                transcripts,
                AsrRun(
                    started_ns=started,
                    ended_ns=ended,
                    windows=windows,
                    model=self.model_name,
                    device=self.device,
                    compute_type=self.compute_type,
                ),
            )
            for transcripts, windows in results
        ]

    def transcribe_groups(
        self, groups: list[list[AudioPiece]], decoding: Decoding | None = None, resume: bool = True
    ) -> list[tuple[list[Transcript], list[WindowStats]]]:
        """Transcribe several independent groups of pieces (several jobs) at once, so that their
        windows can share batched decoder calls; one (transcripts, stats) per group.

        Each window is encoded once. Whisper sometimes stops decoding before the end of a window
        (it emits end-of-text after one piece, or after part of the last one); with ``resume``
        the window decoder goes on from there on the same encoder output, and audio even that did
        not reach is cut out of its piece and decoded again in a window of its own (up to
        ``MAX_PACK_ATTEMPTS`` times), and the words are merged back into the piece's transcript.
        Retried windows still share batched decoder calls. Where the pieces of a window have
        different owners (several streams' audio), a piece that a word crossed into or out of from
        another owner's slot is decoded again in a window of its own, whole, its first words
        discarded (:func:`~speechpipe.stages.asr.windows.crossings`; counted in the window's
        :class:`WindowStats`); a retry window holds one piece, so it cannot cross again.
        ``decoding``: the prompt and first
        temperature of every window of the call (None: none, and 0). ``resume`` is for windows
        whose make-up is fixed by the audio (offline): a continuation reads the window's text so
        far as context, so where arrival times decide which pieces share a window (the live
        scheduler) it would make the same audio come out differently run to run.
        """
        parts: dict[int, list[Transcript]] = {}
        stats: list[list[WindowStats]] = [[] for _ in groups]
        todo: list[list[tuple[AudioPiece, AudioPiece]]] = [[(p, p) for p in g] for g in groups]
        for attempt in range(MAX_PACK_ATTEMPTS + 1):
            last = attempt == MAX_PACK_ATTEMPTS
            windows: list[list[tuple[AudioPiece, AudioPiece]]] = []
            owner: list[int] = []
            for g, items in enumerate(todo):
                origin = {id(piece): orig for piece, orig in items}
                pieces = [piece for piece, _ in items]
                for w in [[p] for p in pieces] if attempt else self.pack(pieces):
                    windows.append([(p, origin[id(p)]) for p in w])
                    owner.append(g)
            todo = [[] for _ in groups]
            dec = decoding or Decoding()
            if attempt:  # a prefix is the start of the first piece's transcript, not of a retry's
                dec = replace(dec, prefix="")
            decoded = self._transcribe_windows([[p for p, _ in w] for w in windows], dec, resume)
            for g, window, (transcripts, st, missed, crossed) in zip(owner, windows, decoded):
                st.attempt = attempt
                stats[g].append(st)
                for (_piece, orig), t, miss, cross in zip(window, transcripts, missed, crossed):
                    if cross:  # a word crossed between owners: this piece is decoded again, alone
                        parts.pop(id(orig), None)
                        todo[g].append((orig, orig))
                        continue
                    parts.setdefault(id(orig), []).append(t)
                    if miss is not None and not last:
                        todo[g].append((miss, orig))
            if not any(todo):
                break
        return [([merge(p, parts[id(p)]) for p in g], st) for g, st in zip(groups, stats)]

    # -- internals ----------------------------------------------------------------------------

    def _transcribe_windows(self, windows: list[list[AudioPiece]], decoding: Decoding, resume: bool) -> list[Decoded]:
        """Run Whisper over each window: one call per window, or batched calls when
        ``batch_size`` > 1 and there is more than one window."""
        assembled = [assemble(w, self.config.gap_s) for w in windows]
        if self.config.batch_size > 1 and len(windows) > 1:
            t0 = time.perf_counter()
            per_window = self._decoder().decode([a for a, _ in assembled], self.config.batch_size, decoding, resume)
            total = time.perf_counter() - t0
            audio_s = sum(a.size for a, _ in assembled) or 1
            walls = [total * a.size / audio_s for a, _ in assembled]
        else:
            per_window, walls = [], []
            for audio, _ in assembled:
                t0 = time.perf_counter()
                per_window.append(self._decode_one(audio, decoding, resume))
                walls.append(time.perf_counter() - t0)
        return [
            map_window(w, offsets, audio, segs, wall, self.config)
            for w, (audio, offsets), segs, wall in zip(windows, assembled, per_window, walls)
        ]

    def _decoder(self):
        with self._decoder_lock:
            return self._make_decoder()

    def _make_decoder(self):
        if self._window_decoder is None:
            from speechpipe.stages.asr.window_decoder import WindowDecoder

            cfg = self.config
            self._window_decoder = WindowDecoder(
                self.model,
                language=cfg.language,
                beam_size=cfg.beam_size,
                temperatures=cfg.temperatures,
                compression_ratio_threshold=cfg.compression_ratio_threshold,
                logprob_threshold=cfg.logprob_threshold,
                no_speech_threshold=cfg.no_speech_threshold,
                context_s=cfg.context_s,
            )
        return self._window_decoder

    def _decode_one(self, audio: np.ndarray, decoding: Decoding, resume: bool) -> list:
        if audio.size == 0:
            return []
        return self._decoder().decode([audio], 1, decoding, resume)[0]
