"""Pipeline variants of an evaluation: named configs from ``--variant`` and ``--sweep``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from speechpipe.pipeline.config import Config, ConfigError, parse_override


class EvalError(ValueError):
    """A variant, sweep or dataset that cannot be evaluated; the message says which."""


@dataclass
class Variant:
    """A named pipeline configuration; ``params`` are the swept keys for a sweep combination."""

    name: str
    config: Config
    params: dict[str, Any] | None = None


def variant_from_arg(text: str, base: Config) -> Variant:
    """``NAME=CONFIG.toml`` (the file applied on top of ``base``) or ``NAME`` (``base`` itself)."""
    name, sep, path = text.partition("=")
    name = name.strip()
    if not name:
        raise EvalError(f"--variant {text!r}: expected NAME=CONFIG.toml or NAME")
    config = base
    if sep:
        try:
            config = base.with_file(path)
        except ConfigError as exc:
            raise EvalError(f"--variant {name}: {exc}") from None
    return Variant(name, config.with_overrides({"pipeline.variant": name}))


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``vad.hangover_ms=150,300,600`` -> ``("vad.hangover_ms", [150, 300, 600])``."""
    key, sep, raw = text.partition("=")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not sep or not key.strip() or not values:
        raise EvalError(f"--sweep {text!r}: expected TABLE.KEY=V1,V2,...")
    return key.strip(), [parse_override(f"{key.strip()}={v}")[1] for v in values]


def expand_sweep(base: Config, sweeps: Sequence[str]) -> list[Variant]:
    """The cartesian product of the swept values, one variant per combination, named
    ``key=value,key=value`` (short keys)."""
    specs = [parse_sweep(s) for s in sweeps]
    keys = [k for k, _ in specs]
    if len(set(keys)) != len(keys):
        raise EvalError("--sweep: the same key is swept twice")
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
            raise EvalError(f"--sweep {name}: {exc}") from None
        out.append(Variant(name, config, params))
    return out
