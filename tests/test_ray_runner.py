"""Folders on Ray (a local instance, ``ray.init(num_cpus=2)``) against the local run on the same
corpus files: the same transcripts and outputs, the corrupt file reported in both, a file that
crashes its actor retried once elsewhere and then reported, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import speech_files

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.offline import runner as offline
from speechpipe.pipeline.offline.runner import transcribe_item

pytestmark = pytest.mark.corpus
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """Ray on this machine; its workers with this process's OpenMP threads. Ray gives a worker
    ``OMP_NUM_THREADS`` = its CPUs (1) unless the environment sets it, and on some CPUs (an
    AVX2-only AMD EPYC) CTranslate2 decodes differently with 1 OpenMP thread ("Philip Steels"
    against "fill up steels"): the local run's default is one per core."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
    if before is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = before


def corpus_folder(dest: Path, files: int) -> Path:
    """A folder of ``files`` corpus utterances with their references (links) and a corrupt WAV."""
    dest.mkdir()
    for path in speech_files()[:files]:
        (dest / path.name).symlink_to(path)
        (dest / path.with_suffix(".txt").name).symlink_to(path.with_suffix(".txt"))
    (dest / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(400))
    return dest


@pytest.fixture
def folder(tmp_path) -> Path:
    return corpus_folder(tmp_path / "in", 6)


def outputs(out: Path) -> dict[str, dict]:
    docs = {p.name: json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "summary.json"}
    return {name: {k: d[k] for k in ("text", "segments", "duration", "wer")} for name, d in docs.items()}


def test_ray_gives_the_local_run_s_outputs_and_reports_the_corrupt_file(local_ray, engine, folder, tmp_path):
    from speechpipe.pipeline.offline.ray_runner import RaySettings, ray_transcriber

    config = Config()
    local = offline.run([folder], tmp_path / "local", config, engine=engine, progress=False)
    remote = offline.run(
        [folder], tmp_path / "ray", config, progress=False, transcriber=ray_transcriber(config, RaySettings(actors=2))
    )
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local") and len(outputs(tmp_path / "ray")) == 6
    for summary in (local, remote):
        assert summary.transcribed == 6 and [Path(f.file).name for f in summary.failed] == ["corrupt.wav"]
    assert remote.failed[0].error == local.failed[0].error
    assert remote.wer.wer == local.wer.wer
    doc = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert doc["transcribed"] == 6 and doc["failed"][0]["file"].endswith("corrupt.wav")
    # Resume: a second run finds every output complete and starts no actor.
    again = offline.run(
        [folder], tmp_path / "ray", config, progress=False, transcriber=ray_transcriber(config, RaySettings(actors=2))
    )
    assert again.skipped == 6 and again.transcribed == 0


def crash_on(name: str, once_marker: Path | None = None):
    """An actor's file function that kills its process on the file ``name`` (every time, or only
    until ``once_marker`` exists)."""

    def run_item(item, config, engine):
        if item.path.name == name and (once_marker is None or not once_marker.exists()):
            if once_marker is not None:
                once_marker.touch()
            os._exit(1)
        return transcribe_item(item, config, engine)

    return run_item


def test_a_file_that_crashes_its_actor_is_retried_once_then_reported(local_ray, folder, tmp_path):
    from speechpipe.pipeline.offline.ray_runner import RaySettings, ray_transcriber

    config = Config()
    victim = speech_files()[2].name
    summary = offline.run(
        [folder],
        tmp_path / "always",
        config,
        progress=False,
        transcriber=ray_transcriber(config, RaySettings(actors=2), crash_on(victim)),
    )
    assert summary.transcribed == 5
    failed = {Path(f.file).name: f.error for f in summary.failed}
    assert set(failed) == {"corrupt.wav", victim} and failed[victim].startswith("crashed a Ray worker twice")
    marker = tmp_path / "crashed-once"
    flaky = offline.run(
        [folder],
        tmp_path / "once",
        config,
        progress=False,
        transcriber=ray_transcriber(config, RaySettings(actors=2), crash_on(victim, marker)),
    )
    assert marker.exists() and flaky.transcribed == 6 and [Path(f.file).name for f in flaky.failed] == ["corrupt.wav"]


def _comparable(doc: dict) -> dict:
    """An eval.json's figures without what depends on the machine and the clock."""
    timing = ("wall", "s_per_audio_s", "asr_wall")

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not any(t in k for t in timing)}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip({k: doc[k] for k in ("variants", "comparisons", "files", "failed")})


def test_eval_on_ray_gives_the_local_figures(local_ray, engine, tmp_path):
    """``speechpipe eval --ray``: the reference timings and both variants' files on two actors give
    the eval.json of the local run on the same machine (by construction: the same decodes); the
    corrupt file is reported in both; the timings computed on the actors fill the local cache."""
    from test_evaluate import variants

    from speechpipe.pipeline.evaluate.runner import EvalOptions, evaluate
    from speechpipe.pipeline.offline.ray_runner import RayPool, RaySettings

    ds = corpus_folder(tmp_path / "ds", 4)
    (ds / "corrupt.txt").write_text("a reference for audio that cannot be read\n")
    opts = EvalOptions(report=False)
    local = evaluate([ds], variants(), tmp_path / "local", options=opts, engine_factory=lambda cfg: engine)
    with RayPool(RaySettings(actors=2)) as pool:
        remote = evaluate([ds], variants(), tmp_path / "ray", options=opts, pool=pool)
    assert _comparable(remote.doc) == _comparable(local.doc)
    assert remote.doc["files"] == 4 and [f["file"] for f in remote.failed] == ["ds/corrupt.wav"]
    assert [f["file"] for f in local.failed] == ["ds/corrupt.wav"]
    assert len(list((tmp_path / "ray" / "cache" / "ref_timing").glob("*.json"))) == 4
    # Both variants were scored on the actors, and the comparison of the two is the local one. Which
    # of the two is worse on these 4 files (37 words) is not asserted: it is a decode of a handful of
    # words, and another CPU decodes them slightly differently (an Intel Xeon gave 13.5 % vs 16.2 %
    # where the machine this was written on gave the opposite order). What holds on any machine is
    # that Ray gives the figures of the local run on the same machine, asserted above.
    assert set(remote.doc["variants"]) == {"default", "harmful"}
    assert [(c["baseline"], c["variant"]) for c in remote.doc["comparisons"]] == [("default", "harmful")]
