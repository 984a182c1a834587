"""Pipeline configuration: dataclasses loaded from TOML, overridden by flags.

A config file has these tables, every key optional::

    [pipeline]
    variant = "default"        # name carried on every span and metric

    [vad]                      # speechpipe.stages.vad.VadConfig
    backend = "silero"         # or "webrtc"
    aggressiveness = 2
    frame_ms = 30
    pre_roll_ms = 300
    hangover_ms = 500
    min_speech_ms = 150
    max_segment_s = 29.0

    [asr]                      # speechpipe.stages.asr.AsrConfig
    model = "tiny.en"
    device = "auto"
    compute_type = "auto"
    beam_size = 1
    language = "en"

    [output]
    formats = ["json", "txt", "srt", "vtt"]

    [telemetry]                # speechpipe.telemetry.settings.TelemetryConfig
    service_name = "speechpipe"
    otlp_endpoint = "http://localhost:4317"
    otlp_protocol = "grpc"     # or "http"
    trace_file = "traces.jsonl"
    trace_text = false
    prometheus_port = 9464

    [server]                   # ServerSettings: speechpipe serve
    max_streams = 16
    partial_interval_s = 1.0

    [[auth.keys]]              # speechpipe.pipeline.server.keys: who may call speechpipe serve
    name = "alice"
    token_sha256 = "9f86d0..." # or token = "..."; docs/protocol.md, Authentication
    scopes = ["stream"]        # any of: stream, feedback, review, admin

    [variants.green.vad]       # a named variant: any [vad] / [asr] / [automation] key over the base
    backend = "webrtc"

    [variants.base.asr]
    model = "base"

    [deploy]                   # speechpipe.pipeline.deploy.DeploySettings (docs/deployment.md)
    mode = "canary"            # single | shadow | canary | bluegreen
    candidate = "green"

    [deploy.gates]
    wer_delta = 0.03

    [automation]               # speechpipe.pipeline.review.settings (docs/review.md)
    level = "partial"          # human | shadow | assist | partial | full
    review_below = 0.8

    [review]
    db = "reviews.db"          # or postgresql://user@host/db
    keep_days = 30

The base config itself is the variant named by ``pipeline.variant``; :meth:`Config.for_variant`
gives the effective config of any variant.

An unknown table or key is an error that names it, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechpipe.pipeline.deploy.settings import DeploySettings
from speechpipe.pipeline.monitoring.settings import MonitoringSettings
from speechpipe.pipeline.review.settings import AutomationSettings, ReviewSettings
from speechpipe.pipeline.server.keys import AuthSettings
from speechpipe.pipeline.server.settings import ServerSettings
from speechpipe.stages.asr import AsrConfig
from speechpipe.stages.vad import VadConfig
from speechpipe.telemetry.settings import TelemetryConfig

#: every file the offline runner can write (``[output] formats``); the JSON is always written.
OUTPUT_FORMATS = ("json", "txt", "srt", "vtt")

#: the tables a variant may override.
VARIANT_TABLES = ("vad", "asr", "automation")
#: ASR keys that change how fast, not what, a pipeline transcribes: not part of a variant's id.
_THROUGHPUT_KEYS = ("threads", "workers")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class OutputConfig:
    """What the offline runner writes. JSON is always written: it marks a file as done."""

    formats: tuple[str, ...] = OUTPUT_FORMATS

    def __post_init__(self) -> None:
        formats = tuple(self.formats)
        bad = [f for f in formats if f not in OUTPUT_FORMATS]
        if bad:
            raise ValueError(f"output.formats: unknown format(s) {bad}; choose from {list(OUTPUT_FORMATS)}")
        if "json" not in formats:
            formats = ("json",) + formats
        object.__setattr__(self, "formats", formats)


@dataclass(frozen=True)
class PipelineSettings:
    """Settings of the pipeline as a whole."""

    variant: str = "default"


@dataclass(frozen=True)
class Config:
    """Everything a run needs; immutable, so a config can be shared between streams."""

    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    vad: VadConfig = field(default_factory=VadConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    deploy: DeploySettings = field(default_factory=DeploySettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    automation: AutomationSettings = field(default_factory=AutomationSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    #: named variants: ``{name: {"vad": {...}, "asr": {...}}}``, each over this config's tables.
    variants: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def variant_names(self) -> tuple[str, ...]:
        """The base variant (``pipeline.variant``) first, then the named variants."""
        base = self.pipeline.variant
        return (base,) + tuple(name for name in self.variants if name != base)

    def for_variant(self, name: str) -> Config:
        """The effective config of variant ``name``: its ``[vad]`` / ``[asr]`` keys over this one's,
        and ``pipeline.variant`` set to ``name``. Unknown names and keys raise :class:`ConfigError`."""
        if name == self.pipeline.variant and name not in self.variants:
            return self
        if name not in self.variants:
            known = ", ".join(self.variant_names())
            raise ConfigError(f"unknown variant {name!r} (known: {known})")
        tables = self.variants[name]
        changes = {t: _replace(getattr(self, t), dict(v), f"variants.{name}.{t}") for t, v in tables.items()}
        changes["pipeline"] = dataclasses.replace(self.pipeline, variant=name)
        try:
            return dataclasses.replace(self, **changes)
        except ValueError as exc:
            raise ConfigError(f"variants.{name}: {exc}") from None

    @property
    def variant_id(self) -> str:
        """A stable id of what this config's pipeline does: a hash of its effective ``[vad]`` and
        ``[asr]`` settings (thread and worker counts aside), carried on results, spans and metrics."""
        asr = {k: v for k, v in dataclasses.asdict(self.asr).items() if k not in _THROUGHPUT_KEYS}
        doc = json.dumps({"vad": dataclasses.asdict(self.vad), "asr": asr}, sort_keys=True, default=str)
        return hashlib.sha256(doc.encode()).hexdigest()[:8]

    def with_file(self, path: str | Path) -> Config:
        """A copy with the tables of the TOML file ``path`` applied on top."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        return _apply(self, data, source=str(path))

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """A copy with dotted keys replaced, e.g. ``{"vad.aggressiveness": 3}``."""
        tables: dict[str, Any] = {}
        for dotted, value in overrides.items():
            if value is None:
                continue
            *path, key = dotted.split(".")
            if not path or not all(path) or not key:
                raise ConfigError(f"override {dotted!r} must be written table.key")
            node = tables
            for part in path:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"override {dotted!r} conflicts with another override")
            node[key] = value
        return _apply(self, tables, source="override")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load ``path`` (TOML) if given, then apply dotted ``overrides``."""
    config = Config()
    if path is not None:
        config = config.with_file(path)
    if overrides:
        config = config.with_overrides(overrides)
    return config


def sized_for_cores(asr: AsrConfig, workers: int = 0, cores: int | None = None) -> AsrConfig:
    """``asr`` sized for a machine of ``cores`` cores (default: this one's): ``workers`` model
    replicas running calls at the same time (0: one per core up to 2 cores, then one per 2 cores),
    each on ``asr.threads`` threads (0: the cores shared out between the workers, at least one).

    The one rule of ``speechpipe serve`` (``server.asr_workers``) and ``speechpipe transcribe``
    (``--jobs``). Why: on 2 cores two 1-thread calls did 1.35 times the work of one 2-thread call
    (tiny.en, the corpus utterances), so a small machine runs a call per core; but a 1-thread call
    takes about 1.5 times as long, and each worker holds a replica of the model, so past 2 cores a
    worker gets 2 threads: calls finish sooner and half the replicas are loaded.
    """
    cores = cores or os.cpu_count() or 1
    workers = workers or (cores if cores <= 2 else cores // 2)
    return dataclasses.replace(asr, workers=workers, threads=asr.threads or max(1, cores // workers))


def parse_override(text: str) -> tuple[str, Any]:
    """``"vad.aggressiveness=3"`` -> ``("vad.aggressiveness", 3)``; the value is read as TOML when it
    parses as TOML (numbers, booleans, lists), else taken as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must be written table.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def _apply(config: Config, data: dict[str, Any], source: str) -> Config:
    changes = {}
    known = {f.name: f for f in dataclasses.fields(Config)}
    for table, values in data.items():
        if table not in known:
            raise ConfigError(f"{source}: unknown table [{table}] (known: {', '.join(known)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{table}] must be a table")
        current = getattr(config, table)
        if table == "variants":
            changes[table] = _merge_variants(current, values, source)
        else:
            changes[table] = _replace(current, values, f"{source}: {table}")
    try:
        result = dataclasses.replace(config, **changes)
    except ValueError as exc:  # re-raised as ConfigError for a uniform message
        raise ConfigError(f"{source}: {exc}") from None
    for name in result.variants:  # every variant must build, so a bad key fails at load time
        try:
            result.for_variant(name)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return result


def _merge_variants(current: Mapping, values: dict[str, Any], source: str) -> dict:
    merged = {name: {t: dict(v) for t, v in tables.items()} for name, tables in current.items()}
    for name, tables in values.items():
        if not isinstance(tables, dict):
            raise ConfigError(f"{source}: [variants.{name}] must be a table")
        for table, keys in tables.items():
            if table not in VARIANT_TABLES:
                raise ConfigError(
                    f"{source}: variants.{name}.{table}: a variant overrides only {', '.join(VARIANT_TABLES)}"
                )
            if not isinstance(keys, dict):
                raise ConfigError(f"{source}: [variants.{name}.{table}] must be a table")
            merged.setdefault(name, {}).setdefault(table, {}).update(keys)
    return merged


def _replace(obj: Any, values: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(fields)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):  # a nested table
            kwargs[key] = _replace(current, value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return dataclasses.replace(obj, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint, widening int to float and lists to tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(v, item, where) for v in value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
