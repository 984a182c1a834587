"""Shared fixtures: the real corpus beside the project, the real bundled model."""

from __future__ import annotations

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


@pytest.fixture(scope="session", autouse=True)
def _corpus_present() -> None:
    if not CORPUS.is_dir():
        pytest.exit(f"the evaluation corpus is missing: expected it at {CORPUS}", returncode=1)


@pytest.fixture(scope="session")
def engine():
    """The real ASR engine on the bundled tiny.en model, loaded once for the whole run."""
    from speechpipe.stages.asr import AsrConfig, AsrEngine

    return AsrEngine(AsrConfig(threads=2))
