"""The ``[auth]`` table: named API keys, each a principal with its scopes (pure; the pipeline's
config imports it, ``speechpipe serve --keys FILE`` reads a file holding the same table).

::

    [[auth.keys]]
    name = "alice"
    token_sha256 = "9f86d0..."   # sha256 of the token, hex; or token = "..." (the hash is safer)
    scopes = ["stream"]          # any of: stream, feedback, review, admin

A config file should hold the hash, not the token: whoever reads the file then cannot call the
server. The server itself keeps only digests (:mod:`.auth`), so a token given in clear is hashed
here and never kept.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

#: every scope a key may list (:mod:`.auth` gives their meaning).
KEY_SCOPES = ("stream", "feedback", "review", "admin")
#: names the server gives principals of its own: a key cannot take them.
RESERVED_NAMES = ("anonymous", "stream", "admin", "reviewer")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def token_digest(token: str) -> str:
    """The sha256 of a token, hex (what ``token_sha256`` holds)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One key: who (``name``), its token's sha256 (hex) and the scopes it grants, exactly those."""

    name: str
    token_sha256: str
    scopes: tuple[str, ...]

    def __repr__(self) -> str:  # the digest stays out of logs and tracebacks too
        return f"ApiKey(name={self.name!r}, scopes={self.scopes!r})"


@dataclass(frozen=True)
class AuthSettings:
    """The ``[auth]`` table: ``keys``, each ``{name, token_sha256 | token, scopes}``.

    Checked at load: names unique (and none of the server's own: ``anonymous``, ``stream``,
    ``admin``, ``reviewer``), one token per key, the hash 64 hex digits, scopes known and not
    empty, no token shared by two keys (a token must say who it is)."""

    keys: tuple = ()

    def __post_init__(self) -> None:
        parsed = tuple(_key(entry, i) for i, entry in enumerate(self.keys))
        names, digests = set(), set()
        for key in parsed:
            if key.name in names:
                raise ValueError(f"auth.keys: the name {key.name!r} is given twice (names must be unique)")
            if key.token_sha256 in digests:
                raise ValueError(f"auth.keys: the key {key.name!r} has the token of another key")
            names.add(key.name)
            digests.add(key.token_sha256)
        object.__setattr__(self, "keys", parsed)


def _key(entry: object, index: int) -> ApiKey:
    """One ``[[auth.keys]]`` entry, checked (an :class:`ApiKey` is taken as it is)."""
    if isinstance(entry, ApiKey):
        return entry
    where = f"auth.keys[{index}]"
    if not isinstance(entry, dict):
        raise TypeError(f"{where} must be a table {{name, token_sha256 or token, scopes}}")
    unknown = sorted(set(entry) - {"name", "token", "token_sha256", "scopes"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (known: name, token, token_sha256, scopes)")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}.name must be 1-64 letters, digits or _.@-")
    where = f"auth.keys[{name}]"
    if name in RESERVED_NAMES:
        raise ValueError(f"{where}: the name {name!r} is the server's own (choose another)")
    token, digest = entry.get("token"), entry.get("token_sha256")
    if (token is None) == (digest is None):
        raise ValueError(f"{where}: give exactly one of token_sha256 (preferred) and token")
    if token is not None:
        if not isinstance(token, str) or not token:
            raise ValueError(f"{where}.token must be a non-empty string")
        digest = token_digest(token)
    elif not isinstance(digest, str) or not _HEX.match(digest.lower()):
        raise ValueError(f"{where}.token_sha256 must be the token's sha256, 64 hex digits")
    scopes = entry.get("scopes")
    if not isinstance(scopes, (list, tuple)) or not scopes:
        raise ValueError(f"{where}.scopes must list at least one of {', '.join(KEY_SCOPES)}")
    bad = [s for s in scopes if s not in KEY_SCOPES]
    if bad:
        raise ValueError(f"{where}.scopes: unknown scope(s) {bad} (known: {', '.join(KEY_SCOPES)})")
    return ApiKey(name, digest.lower(), tuple(dict.fromkeys(scopes)))


def read_keys_file(path: str | Path) -> AuthSettings:
    """The ``[auth]`` table of a keys file (``speechpipe serve --keys FILE``): a TOML file holding
    that table and nothing else, so a keys file cannot change how the server transcribes.
    Raises ValueError naming the file for anything wrong with it."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"--keys {path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--keys {path}: not valid TOML ({exc})") from None
    other = sorted(set(doc) - {"auth"})
    auth = doc.get("auth", {})
    if other or not isinstance(auth, dict) or set(auth) - {"keys"}:
        raise ValueError(f"--keys {path}: a keys file holds only the [auth] table, its [[auth.keys]] entries")
    try:
        return AuthSettings(tuple(auth.get("keys", ())))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--keys {path}: {exc}") from None
