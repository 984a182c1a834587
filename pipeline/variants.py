"""Pipeline variants: named effective configs, whoever runs them.

A variant is a name and the config its pipeline runs with. The live server (``speechpipe serve``,
:mod:`speechpipe.pipeline.deploy.variants` loads their models) and the evaluation (``speechpipe
eval``) take their variants from here, so that a config file means the same variants to both:

- :func:`configured`: the variants a config declares, the base (``pipeline.variant``) first, then
  each ``[variants.NAME]`` table over the base (:meth:`Config.for_variant`);
- :func:`variant_from_arg`: eval's ``--variant NAME=CONFIG.toml`` (a file over the base) or
  ``--variant NAME`` (a declared variant, else the base under that name);
- :func:`expand_sweep`: eval's ``--sweep TABLE.KEY=V1,V2,...``, one variant per combination;
- :func:`selected`: an evaluation's variants: those of ``--variant`` and ``--sweep``, or, with
  neither, every variant the config declares.

A variant that cannot be built raises :class:`~speechpipe.pipeline.config.ConfigError` naming it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from speechpipe.pipeline.config import Config, ConfigError, parse_override


@dataclass(frozen=True)
class Variant:
    """A named pipeline configuration: ``config`` is its effective config (``pipeline.variant`` is
    ``name``); ``params`` are the swept keys of a sweep's combination."""

    name: str
    config: Config
    params: dict[str, Any] | None = None

    @property
    def variant_id(self) -> str:
        """The id of what the pipeline does (:attr:`Config.variant_id`)."""
        return self.config.variant_id


def configured(config: Config, names: Sequence[str] | None = None) -> list[Variant]:
    """The variants ``names`` of ``config`` (default: all it declares, the base first), each with
    its effective config. An unknown name raises :class:`ConfigError`."""
    return [Variant(name, config.for_variant(name)) for name in (config.variant_names() if names is None else names)]


def variant_from_arg(text: str, base: Config) -> Variant:
    """``NAME=CONFIG.toml``: the file applied on top of ``base``; ``NAME``: the variant of that
    name that ``base`` declares, or else ``base`` itself. Either way named ``NAME``."""
    name, sep, path = text.partition("=")
    name = name.strip()
    if not name:
        raise ConfigError(f"--variant {text!r}: expected NAME=CONFIG.toml or NAME")
    if not sep and name in base.variant_names():
        return Variant(name, base.for_variant(name))
    config = base
    if sep:
        try:
            config = base.with_file(path)
        except ConfigError as exc:
            raise ConfigError(f"--variant {name}: {exc}") from None
    return Variant(name, config.with_overrides({"pipeline.variant": name}))


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``vad.hangover_ms=150,300,600`` -> ``("vad.hangover_ms", [150, 300, 600])``."""
    key, sep, raw = text.partition("=")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not sep or not key.strip() or not values:
        raise ConfigError(f"--sweep {text!r}: expected TABLE.KEY=V1,V2,...")
    return key.strip(), [parse_override(f"{key.strip()}={v}")[1] for v in values]


def expand_sweep(base: Config, sweeps: Sequence[str]) -> list[Variant]:
    """The cartesian product of the swept values over ``base``, one variant per combination, named
    ``key=value,key=value`` (short keys where they are unambiguous)."""
    specs = [parse_sweep(s) for s in sweeps]
    keys = [k for k, _ in specs]
    if len(set(keys)) != len(keys):
        raise ConfigError("--sweep: the same key is swept twice")
    short = [k.split(".", 1)[1] if "." in k else k for k in keys]
    if len(set(short)) != len(short):
        short = keys
    out = []
    for combo in itertools.product(*(vals for _, vals in specs)):
        params = dict(zip(keys, combo))
        name = ",".join(f"{s}={v}" for s, v in zip(short, combo))
        try:
            config = base.with_overrides({**params, "pipeline.variant": name})
        except ConfigError as exc:
            raise ConfigError(f"--sweep {name}: {exc}") from None
        out.append(Variant(name, config, params))
    return out


def selected(base: Config, args: Sequence[str] = (), sweeps: Sequence[str] = ()) -> list[Variant]:
    """The variants of an evaluation: one per ``--variant`` argument, then the sweep's; with
    neither, every variant ``base`` declares (the base first, then its ``[variants.*]`` tables),
    as ``speechpipe serve`` would load them from the same file."""
    chosen = [variant_from_arg(a, base) for a in args]
    chosen += expand_sweep(base, sweeps) if sweeps else []
    return chosen or configured(base)
