"""The live protocol, Sans-I/O: parsing client messages, with the error and close code of each
bad one."""

from __future__ import annotations

import pytest

from speechpipe.pipeline import protocol as P
from speechpipe.pipeline.protocol import ProtocolError, Start, Stop


def test_start_defaults_and_fields():
    assert P.parse_client_text('{"type": "start"}') == Start(16000, "pcm_s16le", 1, "en", True)
    s = P.parse_client_text('{"type":"start","sample_rate":48000,"encoding":"pcm_f32le","channels":2,"partials":false}')
    assert s == Start(48000, "pcm_f32le", 2, "en", False) and s.bytes_per_frame == 8
    assert isinstance(P.parse_client_text('{"type": "stop"}'), Stop)
    s = P.parse_client_text('{"type": "start", "prompt": "Philip Steels", "temperature": 0.4}')
    assert (s.prompt, s.temperature) == ("Philip Steels", 0.4)
    assert s.to_dict()["prompt"] == "Philip Steels" and "prompt" not in Start().to_dict()


@pytest.mark.parametrize(
    "text, code",
    [
        ("", "bad_json"),
        ("{", "bad_json"),
        ('"start"', "bad_message"),
        ('{"type": "Start"}', "unknown_type"),
        ('{"type": "start", "sample_rate": true}', "unsupported_rate"),
        ('{"type": "start", "sample_rate": 200000}', "unsupported_rate"),
        ('{"type": "start", "channels": 1.5}', "unsupported_channels"),
        ('{"type": "start", "encoding": "PCM_S16LE"}', "unsupported_encoding"),
        ('{"type": "start", "partials": "yes"}', "bad_message"),
        ('{"type": "start", "prompt": 7}', "bad_message"),
        ('{"type": "start", "prompt": "' + "x" * 2001 + '"}', "bad_message"),
        ('{"type": "start", "temperature": 1.5}', "bad_message"),
        ('{"type": "start", "temperature": true}', "bad_message"),
    ],
)
def test_bad_client_messages(text, code):
    with pytest.raises(ProtocolError) as info:
        P.parse_client_text(text)
    assert info.value.code == code and info.value.message
    assert info.value.close_code == P.ERROR_CLOSE_CODES[code]


def test_audio_must_be_whole_frames():
    P.check_audio(b"\x00" * 8, Start(channels=2))
    with pytest.raises(ProtocolError, match="whole number"):
        P.check_audio(b"\x00" * 6, Start(channels=2, encoding="pcm_f32le"))


@pytest.mark.parametrize(
    "field, digits",
    [("sample_rate", 4000), ("sample_rate", 5000), ("channels", 400), ("sample_rate", 310)],
)
def test_numbers_that_do_not_fit_a_float_are_bad_messages(field, digits):
    text = f'{{"type": "start", "{field}": {"9" * digits}}}'
    with pytest.raises(ProtocolError) as info:
        P.parse_client_text(text)
    assert info.value.code == "bad_message" and f"{digits} digits" in info.value.message


def test_large_numbers_that_fit_a_float_are_judged_as_numbers():
    with pytest.raises(ProtocolError) as info:
        P.parse_client_text(f'{{"type": "start", "sample_rate": 1{"0" * 300}}}')
    assert info.value.code == "unsupported_rate"


def test_revision_message_as_documented():
    """docs/protocol.md: a reviewed transcript replaces the final of its segment."""
    assert P.revision(3, "and so my fellow Americans") == {
        "type": "revision",
        "segment": 3,
        "text": "and so my fellow Americans",
        "by": "human",
    }


def test_a_start_written_by_to_dict_reads_back_as_itself():
    """The OpenAI routes write their ``start`` with :meth:`Start.to_dict`: what the server reads."""
    start = Start(8000, "pcm_f32le", 2, "en", partials=False, prompt="Philip Steels", temperature=0.2)
    assert P.parse_client_text(P.dumps(start.to_dict())) == start
    assert P.parse_client_text(P.dumps(Start(partials=False).to_dict())) == Start(partials=False)
