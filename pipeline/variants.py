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


def _same_model(a: AsrConfig, b: AsrConfig) -> bool:
    """Whether an engine built for ``a`` serves ``b`` as it is (thread and worker counts aside)."""
    return replace(a, threads=0, workers=1) == replace(b, threads=0, workers=1)


def load_variant(config: Config, name: str, engine: AsrEngine | None = None) -> Variant:
    """Build and load variant ``name`` of ``config``. ``engine`` (already loaded) is used when the
    variant's ASR settings are the engine's; otherwise its model is loaded (shared when another
    variant loaded the same one). Raises :class:`ConfigError` naming the variant."""
    effective = config.for_variant(name)
    asr = live_asr(effective.asr, config.server)
    if engine is not None and _same_model(engine.config, effective.asr):
        return Variant(name, effective, engine)
    try:
        return Variant(name, effective, AsrEngine(asr))
    except Exception as exc:  # noqa: BLE001 - any load failure refuses the variant, by name
        raise ConfigError(f"variant {name!r}: cannot load model {effective.asr.model!r}: {exc}") from None


def load_variants(config: Config, names: list[str], engine: AsrEngine | None = None) -> dict[str, Variant]:
    """Every variant in ``names``, loaded (see :func:`load_variant`); the first error stops it."""
    variants: dict[str, Variant] = {}
    for name in names:
        variants[name] = load_variant(config, name, engine)
        engine = engine or variants[name].engine
    return variants
