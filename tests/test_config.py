"""Config files, overrides and their errors."""

from __future__ import annotations

import pytest

from speechpipe.pipeline.cli.main import main
from speechpipe.pipeline.config import Config, ConfigError, load_config, parse_override


def write(tmp_path, text: str):
    path = tmp_path / "speechpipe.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_full_config_file(tmp_path):
    path = write(
        tmp_path,
        """
[pipeline]
variant = "strict-vad"
[vad]
backend = "webrtc"
aggressiveness = 3
frame_ms = 20
pre_roll_ms = 100
hangover_ms = 300
min_speech_ms = 200
max_segment_s = 20
[asr]
model = "tiny.en"
device = "cpu"
compute_type = "int8"
beam_size = 2
language = "en"
[output]
formats = ["json", "srt"]
""",
    )
    cfg = load_config(path)
    assert cfg.pipeline.variant == "strict-vad"
    assert (cfg.vad.aggressiveness, cfg.vad.frame_ms, cfg.vad.hangover_ms, cfg.vad.max_segment_s) == (3, 20, 300, 20.0)
    assert isinstance(cfg.vad.max_segment_s, float)
    assert (cfg.asr.device, cfg.asr.compute_type, cfg.asr.beam_size) == ("cpu", "int8", 2)
    assert cfg.output.formats == ("json", "srt")
    assert cfg.vad.config_id != Config().vad.config_id


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[vad]\nagressiveness = 3\n", "vad.agressiveness"),
        ("[asr]\nbeam = 2\n", "asr.beam"),
        ("[vadd]\naggressiveness = 3\n", "[vadd]"),
        ('[vad]\naggressiveness = "high"\n', "vad.aggressiveness"),
        ("[vad]\naggressiveness = 7\n", "aggressiveness"),
        ('[output]\nformats = ["json", "docx"]\n', "docx"),
        ("[vad\n", "invalid TOML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, text, names):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert names in str(err.value)


def test_overrides_beat_the_file(tmp_path):
    path = write(tmp_path, "[vad]\naggressiveness = 1\nhangover_ms = 300\n")
    cfg = load_config(path, {"vad.aggressiveness": 3, "asr.beam_size": 5})
    assert cfg.vad.aggressiveness == 3 and cfg.vad.hangover_ms == 300 and cfg.asr.beam_size == 5


def test_parse_override_reads_toml_values():
    assert parse_override("vad.hangover_ms=300") == ("vad.hangover_ms", 300)
    assert parse_override("asr.language=en") == ("asr.language", "en")
    assert parse_override("output.formats=['json','vtt']") == ("output.formats", ["json", "vtt"])
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_cli_reports_config_errors(tmp_path, capsys):
    path = write(tmp_path, "[vad]\nhangover = 3\n")
    code = main(["transcribe", str(tmp_path), "-o", str(tmp_path / "out"), "--config", str(path)])
    assert code == 2
    assert "vad.hangover: unknown key" in capsys.readouterr().err


def test_workers_are_sized_from_the_cores_by_one_rule_for_serve_and_transcribe():
    """``server.asr_workers = 0`` and ``transcribe --jobs 0`` size the same: a worker per core up to
    2 cores, then one per 2 cores, the cores shared out; explicit counts and threads are kept."""
    from speechpipe.pipeline.config import sized_for_cores
    from speechpipe.pipeline.deploy.variants import live_asr
    from speechpipe.pipeline.offline.runner import parallel_config
    from speechpipe.pipeline.server.settings import ServerSettings

    asr = Config().asr
    for cores, expected in ((1, (1, 1)), (2, (2, 1)), (3, (1, 3)), (8, (4, 2)), (16, (8, 2))):
        sized = sized_for_cores(asr, 0, cores)
        assert (sized.workers, sized.threads) == expected
        assert live_asr(asr, ServerSettings(), cores) == sized
        config, jobs = parallel_config(Config(asr=asr), 0, cores)
        assert (jobs, config.asr) == (expected[0], sized)
    assert (sized_for_cores(asr, 3, 8).workers, sized_for_cores(asr, 3, 8).threads) == (3, 2)
    threaded = sized_for_cores(Config(asr=asr).with_overrides({"asr.threads": 4}).asr, 0, 8)
    assert (threaded.workers, threaded.threads) == (4, 4)
