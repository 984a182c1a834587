"""The pipeline variants a live server runs side by side: each a full pipeline (its own ``[vad]``
and ``[asr]`` over the base config), with a stable id, and an engine. Variants whose ASR settings
load the same model share it (the model cache of :mod:`speechpipe.stages.asr.model`); a variant
that cannot be built or loaded is refused with an error that names it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from speechpipe.pipeline.config import Config, ConfigError, ServerSettings
from speechpipe.stages.asr import AsrConfig, AsrEngine


@dataclass(frozen=True)
class Variant:
    """One pipeline variant, loaded."""

    name: str
    config: Config  # its effective config
    engine: AsrEngine

    @property
    def variant_id(self) -> str:
        return self.config.variant_id


def live_asr(asr: AsrConfig, settings: ServerSettings, cores: int | None = None) -> AsrConfig:
    """The ASR settings of a live server: ``server.asr_workers`` calls at once (one per core by
    default), each on ``asr.threads`` threads (by default the cores shared out between them)."""
    cores = cores or os.cpu_count() or 1
    workers = settings.asr_workers or cores
    return replace(asr, workers=workers, threads=asr.threads or max(1, cores // workers))


def _model_key(asr: AsrConfig) -> tuple:
    """What decides the loaded model (its weights, device and precision): variants that agree on
    it share one model, whatever their decoding or guard settings."""
    return (asr.model, asr.device, asr.compute_type)


def load_variant(config: Config, name: str, engines: dict[tuple, AsrEngine] | None = None) -> Variant:
    """Build and load variant ``name`` of ``config``. ``engines`` (loaded engines by model key) is
    searched first: a variant with the same ASR settings reuses that engine, one with the same
    model but other settings gets an engine of its own on the same weights. Raises
    :class:`ConfigError` naming the variant."""
    effective = config.for_variant(name)
    engines = engines if engines is not None else {}
    loaded = engines.get(_model_key(effective.asr))
    if loaded is not None:
        threads = {"threads": loaded.config.threads, "workers": loaded.config.workers}
        if replace(effective.asr, **threads) == loaded.config:
            return Variant(name, effective, loaded)
        return Variant(name, effective, AsrEngine(replace(effective.asr, **threads), model=loaded.model))
    try:
        engine = AsrEngine(live_asr(effective.asr, config.server))
    except Exception as exc:  # noqa: BLE001 - any load failure refuses the variant, by name
        raise ConfigError(f"variant {name!r}: cannot load model {effective.asr.model!r}: {exc}") from None
    engines[_model_key(effective.asr)] = engine
    return Variant(name, effective, engine)


def load_variants(config: Config, names: list[str], engine: AsrEngine | None = None) -> dict[str, Variant]:
    """Every variant in ``names``, loaded (see :func:`load_variant`), sharing ``engine`` (already
    loaded, e.g. by a test) where its model is theirs; the first error stops it."""
    engines = {_model_key(engine.config): engine} if engine is not None else {}
    return {name: load_variant(config, name, engines) for name in names}
