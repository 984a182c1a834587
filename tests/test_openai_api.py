"""The OpenAI-compatible endpoints, with the official ``openai`` SDK as the client, on a real server
(127.0.0.1) with the real model and corpus audio."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import urllib.request
import uuid
import warnings

import numpy as np
import openai
import pytest
import soundfile as sf
from baselines import TOLERANCE
from conftest import CORPUS, SPEECH, speech_files
from livehelp import ServerThread

from speechpipe.pipeline.clients.client import paced, stream_pcm
from speechpipe.pipeline.config import Config
from speechpipe.pipeline.evaluate.quality.wer import score_corpus
from speechpipe.pipeline.offline.runner import transcribe_file
from speechpipe.pipeline.openai_api.realtime_core import G711
from speechpipe.pipeline.protocol import Start
from speechpipe.stages.audio import load_audio, resample

pytestmark = pytest.mark.corpus

TOKEN = "sk-test-stream-token"
LONG = CORPUS / "long" / "ted_bill-gates_next-epidemic_first-62s.mp3"
FILES = speech_files()[:10]


@pytest.fixture(scope="module")
def srv(engine):
    with ServerThread(engine, token=TOKEN, max_upload_bytes=4 * 1024 * 1024) as server:
        yield server


def client(srv: ServerThread, key: str = TOKEN, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.http + "/v1", api_key=key, max_retries=0, **kw)


def reference(path) -> str:
    return path.with_suffix(".txt").read_text().strip()


def cue_text(subtitles: str) -> str:
    """The words of SRT or WebVTT cues, in order."""
    keep = [
        line
        for line in subtitles.splitlines()
        if line.strip() and "-->" not in line and not line.strip().isdigit() and line.strip() != "WEBVTT"
    ]
    return " ".join(keep)


def test_every_response_format_scores_as_the_offline_transcriber(srv, engine):
    api = client(srv)
    offline = [transcribe_file(p, Config(), engine).text for p in FILES]
    texts: dict[str, list[str]] = {fmt: [] for fmt in ("json", "text", "srt", "vtt", "verbose_json")}
    for path in FILES:
        for fmt, found in texts.items():
            with path.open("rb") as f:
                answer = api.audio.transcriptions.create(file=f, model="whisper-1", response_format=fmt)
            if fmt in ("json", "verbose_json"):
                found.append(answer.text)
            elif fmt == "text":
                found.append(answer)
            else:
                assert answer.startswith("WEBVTT") if fmt == "vtt" else answer.startswith("1\n00:00:")
                found.append(cue_text(answer))
    # Each request is a stream whose segments are packed into windows fixed by its audio, as
    # `speechpipe transcribe` packs a file's, but run one window per call where the offline run
    # batches several windows in one decoder call. The words may differ; the bar is the WER,
    # within the suite's tolerance for live decodes of the same audio (tests/baselines.json
    # "live_wer"). Half a point, the OpenAI API issue's figure,
    # is less than one word of these ~55: it held here, but another CPU decoding one word
    # differently in either path would fail it, which says nothing about the endpoint.
    base = score_corpus(zip(map(reference, FILES), offline))
    for fmt, hyps in texts.items():
        wer = score_corpus(zip(map(reference, FILES), hyps))
        assert wer.wer <= base.wer + TOLERANCE["live_wer"], (fmt, wer.wer, base.wer)
        assert wer.ref_words == base.ref_words > 50
        assert all(h.strip() for h in hyps), fmt  # every file said something in every format


def test_verbose_json_has_segments_and_words_of_the_long_recording(srv):
    with LONG.open("rb") as f:
        answer = client(srv).audio.transcriptions.create(
            file=f, model="speechpipe", response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert answer.duration == pytest.approx(62.0, abs=0.5) and answer.language == "english"
    assert len(answer.segments) >= 5 and len(answer.words) > 100
    starts = [w.start for w in answer.words]
    assert starts == sorted(starts) and all(w.start <= w.end <= answer.duration for w in answer.words)
    assert " ".join(w.word for w in answer.words).split() == answer.text.split()
    for seg in answer.segments:
        assert (
            seg.start < seg.end and seg.avg_logprob < 0 and 0 <= seg.no_speech_prob <= 1 and seg.compression_ratio > 0
        )
    score = score_corpus([(LONG.with_suffix(".txt").read_text(), answer.text)])
    assert score.wer < 0.15


def test_streaming_deltas_add_up_to_the_done_text(srv):
    api = client(srv)
    with LONG.open("rb") as f:
        events = list(api.audio.transcriptions.create(file=f, model="whisper-1", stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert events[-1].type == "transcript.text.done" and len(deltas) >= 5
    assert "".join(deltas) == events[-1].text
    # The same upload without streaming: the same transcript within the tolerance the suite gives
    # live decodes of the same audio (tests/baselines.json "live_wer"), not character for
    # character. An upload is a live stream, and which of its pieces share a Whisper window
    # depends on when the worker takes them: about one run in ten (alone or in the full suite,
    # before and after the 2026-12-04 changes) a final period moved, "in" became "on" and the
    # last word went missing, or, once in a full suite, 4 of 140 words differed (2.9 %).
    with LONG.open("rb") as f:
        plain = api.audio.transcriptions.create(file=f, model="whisper-1").text
    assert score_corpus([(plain, events[-1].text)]).wer <= TOLERANCE["live_wer"], (plain, events[-1].text)


def test_models_and_errors_in_openai_shape(srv):
    api = client(srv)
    ids = [m.id for m in api.models.list().data]
    assert ids == ["speechpipe", "whisper-1", "default", "tiny.en"]
    path = FILES[0]
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(srv, key="sk-wrong").audio.transcriptions.create(file=path.open("rb"), model="whisper-1")
    with pytest.raises(openai.NotFoundError) as unknown:
        api.audio.transcriptions.create(file=path.open("rb"), model="whisper-9")
    with pytest.raises(openai.BadRequestError) as corrupt:
        api.audio.transcriptions.create(
            file=("notes.wav", b"RIFF\x10\x00\x00\x00WAVEnot audio at all"), model="whisper-1"
        )
    whole = path.read_bytes()
    with pytest.raises(openai.BadRequestError) as truncated:
        api.audio.transcriptions.create(file=("cut.wav", whole[: len(whole) // 2]), model="whisper-1")
    with pytest.raises(openai.BadRequestError) as bad_format:
        api.audio.transcriptions.create(file=path.open("rb"), model="whisper-1", response_format="docx")
    # 62 s at 48 kHz in stereo floats, as a browser records it: 24 MB, over the server's 4 MiB.
    audio, _ = load_audio(LONG)
    big = io.BytesIO()
    sf.write(big, np.repeat(resample(audio, 16000, 48000)[:, None], 2, axis=1), 48000, format="WAV", subtype="FLOAT")
    with pytest.raises(openai.APIStatusError) as oversize:
        api.audio.transcriptions.create(file=("big.wav", big.getvalue()), model="whisper-1")
    assert wrong.value.status_code == 401 and wrong.value.body["code"] == "invalid_api_key"
    assert unknown.value.status_code == 404 and unknown.value.body["code"] == "model_not_found"
    assert corrupt.value.body["code"] == "invalid_audio" and "notes.wav" in corrupt.value.body["message"]
    assert truncated.value.body["code"] == "invalid_audio" and "truncated" in truncated.value.body["message"]
    assert bad_format.value.body["param"] == "response_format"
    assert oversize.value.status_code == 413 and oversize.value.body["code"] == "file_too_large"
    for exc in (wrong, unknown, corrupt, truncated, bad_format, oversize):
        assert set(exc.value.body) == {"message", "type", "param", "code"}
    # Nothing of it hurt the server: the next request is served.
    assert api.audio.transcriptions.create(file=path.open("rb"), model="whisper-1").text


def test_prompt_steers_the_words_and_temperature_samples(srv):
    """``prompt`` is Whisper's initial prompt for every segment (here its all-lowercase style is
    followed); ``temperature`` above 0 samples from the first decode on; both are checked."""
    api = client(srv)
    path = SPEECH / "cmuarctic_aew_a0001.wav"  # "Author of the danger trail, Philip Steels, etc."
    plain = api.audio.transcriptions.create(file=path.open("rb"), model="whisper-1").text
    styled = api.audio.transcriptions.create(
        file=path.open("rb"), model="whisper-1", prompt="hello there. this text is all lowercase, no capitals at all."
    ).text
    # plain: a capital at least where the sentence begins ("Danger Trail" and "Philip" too on some
    # CPUs, not all); with the prompt: none at all
    assert plain.strip()[0].isupper()
    assert styled.strip() and styled == styled.lower() and "danger trail" in styled
    sampled = api.audio.transcriptions.create(
        file=path.open("rb"), model="whisper-1", temperature=0.8, response_format="verbose_json"
    )
    assert sampled.text and {seg.temperature for seg in sampled.segments} == {0.8}
    for bad in ({"temperature": 1.5}, {"temperature": -0.1}, {"prompt": "x" * 2001}):
        with pytest.raises(openai.BadRequestError) as err:
            api.audio.transcriptions.create(file=path.open("rb"), model="whisper-1", **bad)
        assert err.value.body["param"] == next(iter(bad))


def test_a_request_is_a_stream_with_its_telemetry_and_session(srv):
    raw = client(srv).audio.transcriptions.with_raw_response.create(file=FILES[1].open("rb"), model="whisper-1")
    session = raw.headers["x-speechpipe-session"]
    assert raw.headers["x-speechpipe-variant"] == "default" and raw.parse().text
    assert ("started", session) in srv.hook_log and ("ended", session) in srv.hook_log


def test_an_upload_fed_fast_is_not_taken_for_the_cost_of_a_live_stream(engine):
    """A 62 s upload is transcribed in a few seconds: as a live stream's cost that work would
    have the next live stream refused on an idle server. Admission leaves it out."""
    with ServerThread(engine, token=TOKEN) as fresh:
        with LONG.open("rb") as f:
            assert client(fresh).audio.transcriptions.create(file=f, model="whisper-1").text
        admission = fresh.server.admission
        later = time.monotonic() + admission.window_s + 1
        assert admission.cost(later) == admission.prior_cost  # nothing measured as live load
        assert admission.verdict(time.monotonic(), 0).admitted
        audio, _ = load_audio(FILES[5])
        frames = [pcm16(audio[i : i + 320]) for i in range(0, len(audio), 320)]
        live = asyncio.run(
            stream_pcm(fresh.url, Start(16000, "pcm_s16le", 1, "en", False), paced(frames, 0.02, 0), token=TOKEN)
        )
    assert live.finals and not live.errors


def test_the_same_upload_gives_the_same_text_every_time(srv):
    """Issue 24: five uploads of the 62 s recording gave two texts, because which of its segments
    shared a window depended on when a worker took them. Its windows are now fixed by its audio,
    each a call of its own: five uploads at once, and one more alone, give one text."""
    api = client(srv)

    def upload() -> str:
        with LONG.open("rb") as f:
            return api.audio.transcriptions.create(file=f, model="whisper-1").text

    async def five() -> list[str]:
        return await asyncio.gather(*(asyncio.to_thread(upload) for _ in range(5)))

    texts = asyncio.run(five()) + [upload()]
    assert len(set(texts)) == 1 and len(texts[0].split()) > 100
    assert srv.server.scheduler.stats().fixed >= 6 * 2  # every upload in windows of its own calls


async def refusal_of(api: openai.OpenAI, path) -> openai.APIStatusError | None:
    """Upload ``path`` from a thread: the API error it was answered with, None when served."""
    try:
        with path.open("rb") as f:
            await asyncio.to_thread(api.audio.transcriptions.create, file=f, model="whisper-1")
    except openai.APIStatusError as exc:
        return exc
    return None


def test_an_upload_is_refused_while_the_uploads_queued_would_take_too_long(engine):
    """Uploads run below the live streams on the workers they leave; one more is refused with
    503 and Retry-After while the upload work already queued is over ``max_upload_wait_s``,
    and served once it is done."""
    with ServerThread(engine, token=TOKEN, max_upload_wait_s=0.5) as small:
        api = client(small)

        async def scenario():
            first = asyncio.create_task(
                asyncio.to_thread(api.audio.transcriptions.create, file=LONG.open("rb"), model="whisper-1")
            )
            while small.server.scheduler.fixed_backlog()[0] == 0:  # its windows are queued
                await asyncio.sleep(0.01)
            return await refusal_of(api, FILES[0]), await first

        refused, served = asyncio.run(scenario())
        later = api.audio.transcriptions.create(file=FILES[0].open("rb"), model="whisper-1")
    assert refused is not None and refused.status_code == 503 and refused.body["code"] == "server_busy"
    assert "uploads already queued" in refused.body["message"] and refused.response.headers["retry-after"]
    assert served.text and later.text


def multipart(fields: dict[str, str], name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
    body = b"".join(parts) + head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_client_leaving_mid_stream_releases_its_stream(srv):
    before = srv.server.counters.closed
    body, ctype = multipart({"model": "whisper-1", "stream": "true"}, "long.mp3", LONG.read_bytes())
    request = urllib.request.Request(
        srv.http + "/v1/audio/transcriptions",
        data=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        first = next(line for line in response if line.startswith(b"data: "))
    assert json.loads(first[6:])["type"] == "transcript.text.delta"
    deadline = time.monotonic() + 30
    while srv.server.streams or srv.server.counters.closed == before:
        assert time.monotonic() < deadline, "the abandoned stream was never released"
        time.sleep(0.1)


def test_a_full_server_refuses_with_503_and_retry_after(engine):
    with ServerThread(engine, token=TOKEN, max_streams=1) as small:

        async def scenario():
            audio, _ = load_audio(FILES[2])
            frames = [
                (np.clip(audio[i : i + 320], -1, 1) * 32767).astype("<i2").tobytes() for i in range(0, len(audio), 320)
            ]
            holding = asyncio.create_task(
                stream_pcm(small.url, Start(16000, "pcm_s16le", 1, "en", False), paced(frames, 0.02, 1.0), token=TOKEN)
            )
            while not small.server.streams:
                await asyncio.sleep(0.05)
            return await refusal_of(client(small), FILES[0]), await holding

        refused, held = asyncio.run(scenario())
    assert refused is not None and refused.status_code == 503 and refused.body["code"] == "server_busy"
    assert refused.response.headers["retry-after"] == "5"
    assert held.finals and held.lost == 0  # the stream holding the server lost nothing


def test_deployment_routes_requests_and_a_named_variant_pins_them(engine):
    cfg = Config().with_overrides(
        {"deploy.mode": "bluegreen", "deploy.candidate": "green", "variants.green.vad.backend": "webrtc"}
    )
    with ServerThread(engine, token=TOKEN, config=cfg, admin_token="admin-token") as bg:
        api = client(bg)

        def variant(model: str) -> str:
            raw = api.audio.transcriptions.with_raw_response.create(file=FILES[3].open("rb"), model=model)
            return raw.headers["x-speechpipe-variant"]

        before = (variant("whisper-1"), variant("green"), variant("default"))
        switch = urllib.request.Request(
            bg.http + "/admin/deploy",
            data=json.dumps({"action": "switch", "active": "green"}).encode(),
            headers={"Authorization": "Bearer admin-token", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(switch, timeout=30) as req:
            status = req.status
        after = (variant("speechpipe"), variant("tiny.en"), variant("default"))
    assert before == ("default", "green", "default")
    assert status == 200 and after == ("green", "green", "default")


# -- Realtime ------------------------------------------------------------------------------------


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def test_g711_expansion_matches_the_standard_library():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # the stdlib's G.711 (until Python 3.13): an independent implementation

    every = bytes(range(256))
    assert G711["ulaw"].tobytes() == audioop.ulaw2lin(every, 2)
    assert G711["alaw"].tobytes() == audioop.alaw2lin(every, 2)


async def realtime_transcripts(srv: ServerThread, pcm: bytes, fmt: dict, expect: int) -> tuple[list[str], list[str]]:
    api = openai.AsyncOpenAI(base_url=srv.http + "/v1", api_key=TOKEN, max_retries=0)
    transcripts, kinds = [], []
    async with api.realtime.connect(model="speechpipe") as conn:
        await conn.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": fmt,
                        "transcription": {"model": "speechpipe", "language": "en"},
                        "turn_detection": {"type": "server_vad"},
                    }
                },
            }
        )
        for i in range(0, len(pcm), 4800):  # 100 ms of 24 kHz PCM per event, as microphones send
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + 4800]).decode())

        async def collect():
            async for event in conn:
                kinds.append(event.type)
                assert event.type != "error", event
                if event.type == "conversation.item.input_audio_transcription.completed":
                    transcripts.append(event.transcript)
                    if len(transcripts) == expect:
                        return

        await asyncio.wait_for(collect(), 120)
    return transcripts, kinds


def test_realtime_session_transcribes_as_the_websocket_protocol(srv):
    audio, _ = load_audio(LONG)
    # 25 s of the recording with 2 s of room after it, at the Realtime API's 24 kHz
    pcm = pcm16(np.concatenate([resample(audio[: 25 * 16000], 16000, 24000), np.zeros(48000, np.float32)]))
    frames = [pcm[i : i + 960] for i in range(0, len(pcm), 960)]
    live = asyncio.run(
        stream_pcm(srv.url, Start(24000, "pcm_s16le", 1, "en", False), paced(frames, 0.02, 0), token=TOKEN)
    )
    finals = [f["text"] for f in live.finals]
    assert len(finals) >= 3 and live.lost == 0
    transcripts, kinds = asyncio.run(realtime_transcripts(srv, pcm, {"type": "audio/pcm", "rate": 24000}, len(finals)))
    # The same segments (the VAD is the same on the same audio), the same words within the suite's
    # tolerance for live decodes of the same audio: both are live streams, and which of a stream's
    # queued finals share a Whisper window depends on when the worker takes them (under a loaded
    # suite "in our basement" once came out "on our basement" on one side).
    assert len(transcripts) == len(finals)
    assert score_corpus(zip(finals, transcripts)).wer <= TOLERANCE["live_wer"], (finals, transcripts)
    assert kinds[0] == "session.created" and "session.updated" in kinds
    assert kinds.count("input_audio_buffer.speech_started") >= len(finals)
    assert kinds.count("input_audio_buffer.committed") == len(finals)


def test_realtime_deltas_add_up_to_completed_on_the_long_recording(srv):
    """Issue 27: ``...input_audio_transcription.delta`` events append committed text only, while
    the speaker talks, and an item's deltas add up to its ``completed`` transcript exactly (the
    OpenAI semantics), on the 62 s recording sent at twice real time."""
    audio, _ = load_audio(LONG)
    pcm = pcm16(np.concatenate([resample(audio, 16000, 24000), np.zeros(48000, np.float32)]))
    deltas: dict[str, list[str]] = {}
    completed: dict[str, str] = {}
    before_stop: set[str] = set()  # items with a delta before their speech_stopped

    async def run() -> None:
        api = openai.AsyncOpenAI(base_url=srv.http + "/v1", api_key=TOKEN, max_retries=0)
        async with api.realtime.connect(model="speechpipe") as conn:
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}},
                }
            )

            async def send() -> None:
                t0 = time.monotonic()
                for k, i in enumerate(range(0, len(pcm), 4800)):  # 100 ms an event
                    await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + 4800]).decode())
                    await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.1 / 2 - time.monotonic()))

            sender = asyncio.create_task(send())
            stopped: set[str] = set()
            quiet = 0.0  # seconds without an event since the last audio went out
            while quiet < 8.0:  # until the server has been quiet for 8 s after the last audio
                try:
                    event = await asyncio.wait_for(conn.recv(), 1.0)  # websockets: recv() may be cancelled
                except TimeoutError:
                    quiet += 1.0 if sender.done() else 0.0
                    continue
                quiet = 0.0
                assert event.type != "error", event
                if event.type == "input_audio_buffer.speech_stopped":
                    stopped.add(event.item_id)
                elif event.type == "conversation.item.input_audio_transcription.delta":
                    deltas.setdefault(event.item_id, []).append(event.delta)
                    if event.item_id not in stopped:
                        before_stop.add(event.item_id)
                elif event.type == "conversation.item.input_audio_transcription.completed":
                    completed[event.item_id] = event.transcript
            await sender

    asyncio.run(asyncio.wait_for(run(), 240))
    assert len(completed) >= 5 and set(completed) >= set(deltas)
    for item, transcript in completed.items():
        assert "".join(deltas.get(item, [])) == transcript, (deltas.get(item), transcript)
    assert before_stop, "committed words went out before their segment's end"
    text = " ".join(completed.values())
    assert score_corpus([(LONG.with_suffix(".txt").read_text(), text)]).wer < 0.3


def test_realtime_session_takes_telephone_mu_law(srv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    path = FILES[4]
    audio, _ = load_audio(path)
    narrow = np.concatenate([resample(audio, 16000, 8000), np.zeros(16000, np.float32)])
    ulaw = audioop.lin2ulaw(pcm16(narrow), 2)
    transcripts, _ = asyncio.run(realtime_transcripts(srv, ulaw, {"type": "audio/pcmu"}, 1))
    score = score_corpus([(reference(path), " ".join(transcripts))])
    assert score.wer < 0.35, (transcripts, reference(path))
