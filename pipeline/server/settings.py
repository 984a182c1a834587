"""The ``[server]`` table (pure; the pipeline's config imports it and re-exports the name)."""

from __future__ import annotations

from dataclasses import dataclass

#: where ``speechpipe stream`` and ``mic`` connect by default: a local server with the default settings.
DEFAULT_URL = "ws://127.0.0.1:8765/stream"


@dataclass(frozen=True)
class ServerSettings:
    """The live server (``speechpipe serve``): limits and scheduling; see docs/protocol.md.

    Attributes:
        host / port: where to listen.
        max_streams: concurrent streams; one more is closed with code 1013 and a retry hint.
        max_load: admit a new stream only while the ASR work promised to the streams (the calls
            of their finals, speculative jobs that became finals among them, measured as the
            server runs) stays under this share of the workers' capacity; more queues finals past
            the latency budget. ``max_streams`` stays a hard cap.
        stream_load: the ASR work one stream is assumed to need (worker-seconds per second of
            audio) until a minute of serving has been measured: 0.07 measured for noisy streams
            with ``asr.context_s`` = 7 on 2 cores (docs/benchmarks.md).
        asr_workers: ASR calls run at the same time (0: from the cores, one per core up to 2
            cores, then one per 2 cores: :func:`~speechpipe.pipeline.config.sized_for_cores`).
            Each worker runs ``asr.threads`` threads (0: the cores shared out between them). On 2 cores
            two calls of 1 thread each doubled the throughput of one call on 2 threads, at the
            same latency per call (tiny.en, a 6 s live call: 0.65 s against 0.67 s).
        retry_after_s: the retry hint sent to a stream turned away.
        max_frame_bytes: largest WebSocket message accepted (1009 beyond it).
        max_upload_bytes: largest request body of ``POST /v1/audio/transcriptions`` (413 beyond).
        idle_timeout_s: a stream that sends nothing for this long is closed.
        max_stream_s: longest stream, in seconds of audio or of wall time, whichever comes first.
        drain_timeout_s: on SIGTERM, how long in-flight streams get to receive their finals.
        slow_reader_s: a message that waits this long to be written (the client does not read
            its socket, so the connection's buffers are full) closes the stream as a slow reader
            (1008), well before the WebSocket keepalive (20 s ping + 20 s for its pong) would.
        partials: send partial transcripts at all.
        partial_commit: each partial's ``stable`` holds the words LocalAgreement-2 committed and its
            ``text`` keeps them (pipeline/live/captions.py); false: every partial is the newest
            hypothesis as it is, ``stable`` empty (the behaviour before issue 27, kept to compare).
        partial_interval_s: re-transcribe an open segment once it has grown this much since the
            last partial (only when the ASR worker has nothing better to do).
        partial_first_interval_s: until a partial of the open segment has shown words, one is
            offered each time the segment grew this much (from its first 0.5 s of audio), so the
            first words come as soon as there are some; then every ``partial_interval_s``.
        partial_hold_words: the newest hypothesis' last words a partial does not show yet (the
            audio is cut inside the last word more often than not: it is the word the next
            hypothesis rewrites); shown anyway where nothing else would be. 0: the whole tail.
        partial_min_probability: a partial's unstable tail stops before its first word whose
            Whisper probability is under this (the segment's first word aside); 0: no gate.
        partial_tail_words: the most words of a partial's unstable tail shown after its committed
            words (0: no limit). Where partials are few (a loaded server), nothing gets committed
            and a long uncommitted line is what the final most often replaces whole.
        partial_rest: after an ASR call of ``d`` seconds no partial starts for ``partial_rest * d``,
            so partials take at most 1 / (1 + partial_rest) of the worker (a third by default)
            and stop when finals keep it busy.
        speculative: transcribe a segment while the VAD's hangover runs, so its final is ready
            (or nearly) when the VAD closes it; reused only when the audio is identical.
        pack_streams: let one Whisper call carry segments of several streams when they queue up
            (fewer encoder passes under load). No word passes from one stream to another: a piece
            a word crossed into or out of is decoded again alone (counted). Off by default: on
            the 40 corpus utterances shared windows cost 0.94 WER points on average against a
            call per final (tiny.en, 10 random groupings, benchmarks/shared_windows.py;
            docs/benchmarks.md), for 26 % fewer encoder passes per final.
        stream_gap_s: silence between pieces of different streams in a packed window.
        max_queued_finals: per stream; beyond it the server stops reading that stream's audio
            until the ASR worker catches up (TCP backpressure), so memory stays bounded.
        pack_backlog: finals of this many streams waiting make them share Whisper calls.
        shadow_max_queued: shadow-mode jobs (a shadow variant's finals, run below the clients'
            work) that may wait; beyond it the oldest is shed, counted.
        max_upload_wait_s: an upload (``POST /v1/audio/transcriptions``) is refused with 503 and
            ``Retry-After`` when the upload work already queued would keep the upload workers
            busy longer than this (uploads run below live finals, on all workers but one).
        observer_queue: events of one stream that may wait for its observers (telemetry, the
            deployment's evidence, drift), which run on a thread of their own; beyond it the
            stream's audio and ASR events are dropped for them, counted
            (``speechpipe.observer.dropped``); never is the stream held up.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    max_streams: int = 16
    asr_workers: int = 0
    max_load: float = 0.6
    stream_load: float = 0.07
    retry_after_s: float = 5.0
    max_frame_bytes: int = 256 * 1024
    max_upload_bytes: int = 25 * 1024 * 1024
    idle_timeout_s: float = 30.0
    max_stream_s: float = 4 * 3600.0
    drain_timeout_s: float = 30.0
    slow_reader_s: float = 10.0
    partials: bool = True
    partial_commit: bool = True
    partial_interval_s: float = 1.0
    partial_first_interval_s: float = 0.15
    partial_hold_words: int = 1
    partial_min_probability: float = 0.5
    partial_tail_words: int = 4
    partial_rest: float = 2.0
    speculative: bool = True
    pack_streams: bool = False
    stream_gap_s: float = 1.0
    max_queued_finals: int = 8
    pack_backlog: int = 2
    shadow_max_queued: int = 32
    observer_queue: int = 1000
    max_upload_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"server.port must be 0-65535, not {self.port}")
        for name in (
            "max_streams",
            "max_frame_bytes",
            "max_upload_bytes",
            "max_queued_finals",
            "pack_backlog",
            "shadow_max_queued",
            "observer_queue",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"server.{name} must be at least 1")
        for name in (
            "idle_timeout_s",
            "max_stream_s",
            "drain_timeout_s",
            "slow_reader_s",
            "partial_interval_s",
            "partial_first_interval_s",
            "partial_rest",
            "max_upload_wait_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"server.{name} must be positive")
        if not 0.0 < self.max_load <= 1.0 or self.stream_load <= 0:
            raise ValueError("server.max_load must lie in (0, 1] and server.stream_load be positive")
        if not 0.0 <= self.partial_min_probability <= 1.0:
            raise ValueError("server.partial_min_probability must lie between 0 and 1")
        if self.partial_tail_words < 0:
            raise ValueError("server.partial_tail_words must not be negative (0: no limit)")
        if self.partial_hold_words < 0:
            raise ValueError("server.partial_hold_words must not be negative (0: the whole tail)")
        if self.asr_workers < 0:
            raise ValueError("server.asr_workers must not be negative (0: from the cores)")
        if self.retry_after_s < 0 or self.stream_gap_s < 0:
            raise ValueError("server.retry_after_s and server.stream_gap_s must not be negative")
