"""The pipeline variants a live server runs side by side, loaded: each a
:class:`~speechpipe.pipeline.variants.Variant` of the config (its own ``[vad]`` and ``[asr]`` over
the base) with an engine. Variants whose ASR settings load the same model share it (the model
cache of :mod:`speechpipe.stages.asr.model`); a variant that cannot be built or loaded is refused
with an error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from speechpipe.pipeline.config import Config, ConfigError, ServerSettings, sized_for_cores
from speechpipe.pipeline.variants import Variant, configured
from speechpipe.stages.asr import AsrConfig, AsrEngine, ModelLoadError, load_checked


@dataclass(frozen=True)
class LoadedVariant:
    """A variant and the engine that runs its ASR."""

    variant: Variant
    engine: AsrEngine

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def config(self) -> Config:
        """Its effective config."""
        return self.variant.config

    @property
    def variant_id(self) -> str:
        return self.variant.variant_id


def live_asr(asr: AsrConfig, settings: ServerSettings, cores: int | None = None) -> AsrConfig:
    """The ASR settings of a live server: ``server.asr_workers`` calls at once, sized from the
    cores when 0 (:func:`~speechpipe.pipeline.config.sized_for_cores`)."""
    return sized_for_cores(asr, settings.asr_workers, cores)


def _model_key(asr: AsrConfig) -> tuple:
    """What decides the loaded model (its weights, device and precision): variants that agree on
    it share one model, whatever their decoding or guard settings."""
    return (asr.model, asr.device, asr.compute_type)


def load_variant(variant: Variant, settings: ServerSettings, engines: dict[tuple, AsrEngine]) -> LoadedVariant:
    """``variant`` with its engine. ``engines`` (loaded engines by model key) is searched first: a
    variant with the same ASR settings reuses that engine, one with the same model but other
    settings gets an engine of its own on the same weights; a new one is added. Raises
    :class:`ConfigError` naming the variant when its model cannot be loaded."""
    asr = variant.config.asr
    loaded = engines.get(_model_key(asr))
    if loaded is not None:
        asr = replace(asr, threads=loaded.config.threads, workers=loaded.config.workers)
        return LoadedVariant(variant, loaded if asr == loaded.config else AsrEngine(asr, model=loaded.model))
    asr = live_asr(asr, settings)
    try:
        engine = AsrEngine(asr, model=load_checked(asr))
    except ModelLoadError as exc:
        raise ConfigError(f"variant {variant.name!r}: {exc}") from None
    engines[_model_key(asr)] = engine
    return LoadedVariant(variant, engine)


def load_variants(config: Config, names: list[str], engine: AsrEngine | None = None) -> dict[str, LoadedVariant]:
    """The variants ``names`` of ``config`` (:func:`~speechpipe.pipeline.variants.configured`),
    loaded (see :func:`load_variant`), sharing ``engine`` (already loaded, e.g. by a test) where
    its model is theirs; the first error stops it."""
    engines = {_model_key(engine.config): engine} if engine is not None else {}
    return {v.name: load_variant(v, config.server, engines) for v in configured(config, names)}
