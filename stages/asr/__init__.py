"""The ASR stage: faster-whisper on packed windows of speech, with a hallucination guard.

The public names are re-exported here; modules of the stage import each other directly.
"""

from speechpipe.stages.asr.config import DEFAULT_MODEL, AsrConfig
from speechpipe.stages.asr.engine import AsrEngine
from speechpipe.stages.asr.guard import is_hallucination
from speechpipe.stages.asr.model import ModelLoadError, load_checked, load_model, resolve_device, resolve_model
from speechpipe.stages.asr.packing import pack_windows
from speechpipe.stages.asr.types import AsrRun, AudioPiece, Decoding, Transcript, WindowStats, Word

__all__ = [
    "DEFAULT_MODEL",
    "AsrConfig",
    "AsrEngine",
    "AsrRun",
    "AudioPiece",
    "Decoding",
    "ModelLoadError",
    "Transcript",
    "WindowStats",
    "Word",
    "is_hallucination",
    "load_checked",
    "load_model",
    "pack_windows",
    "resolve_device",
    "resolve_model",
]
