"""Shared fixtures: the real corpus beside the project (tests marked ``corpus``), the real bundled model."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
SPEECH = CORPUS / "speech"
VAD_CLIPS = CORPUS / "vad"
NOISE = CORPUS / "noise"
SAMPLES = ROOT / "samples"


def speech_files() -> list[Path]:
    """The corpus utterances that have a reference transcript."""
    return sorted(p for p in SPEECH.iterdir() if p.suffix in (".wav", ".flac") and p.with_suffix(".txt").exists())


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``corpus`` read ../shared/corpus; without it they are skipped and say why, and
    the others (``-m "not corpus"``) still run. CI checks that the corpus is there."""
    if CORPUS.is_dir():
        return
    skip = pytest.mark.skip(reason=f"the evaluation corpus is missing: expected it at {CORPUS}")
    for item in items:
        if "corpus" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def engine():
    """The real ASR engine on the bundled tiny.en model, loaded once for the whole run."""
    from speechpipe.stages.asr import AsrConfig, AsrEngine

    return AsrEngine(AsrConfig(threads=2))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL (``postgresql+psycopg://...``) of a PostgreSQL database that is empty when the session
    starts and is only the tests': from SPEECHPIPE_TEST_POSTGRES, else a throwaway local cluster (tests/pg.py);
    the tests that take it are skipped where neither can be had."""
    import pg

    with pg.postgres_url() as url:
        yield url


@pytest.fixture(scope="session")
def noisy_speech() -> list[bytes]:
    """30 s of corpus utterances joined by pauses with real room noise (benchmarks/live_streams.py),
    16 kHz mono s16, as the 20 ms frames a live client sends."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from live_streams import build_stream, noises, utterances

    from speechpipe.pipeline.clients.client import pcm_s16le

    audio = build_stream(3, utterances(), 30.0, noises(), -40.0, mixed_formats=False).audio
    return [pcm_s16le(audio[i : i + 320]) for i in range(0, audio.size, 320)]


@pytest.fixture(params=["sqlite", "postgresql"])
def review_db(request, tmp_path) -> Iterator[str]:
    """A review store's database, each backend in turn: a SQLite file, or a real PostgreSQL
    database (``postgres_url``; its tables dropped afterwards)."""
    if request.param == "sqlite":
        yield str(tmp_path / "reviews.db")
        return
    from sqlalchemy import create_engine

    from speechpipe.pipeline.review.schema import metadata, schema

    url = request.getfixturevalue("postgres_url")
    yield url
    engine = create_engine(url)
    metadata.drop_all(engine)
    schema.drop(engine, checkfirst=True)
    engine.dispose()


PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture()
def tmpfs(tmp_path: Path):
    """A 1 MiB tmpfs of its own, unmounted afterwards; skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=False, capture_output=True, text=True
        )
    except OSError as exc:  # no mount command at all
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and a sandbox that allows mount): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave_pages: int) -> Path:
    """Fill ``mnt`` so that ``leave_pages`` pages stay free; the filler's path."""
    filler = mnt / "filler"
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    filler.write_bytes(b"\0" * (free - leave_pages * PAGE))
    assert os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize == leave_pages * PAGE
    return filler
