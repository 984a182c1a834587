"""The server's tokens, from a flag or the environment (empty means none)."""

from __future__ import annotations

import os

TOKEN_ENV = "SPEECHPIPE_TOKEN"
ADMIN_TOKEN_ENV = "SPEECHPIPE_ADMIN_TOKEN"
REVIEWER_TOKEN_ENV = "SPEECHPIPE_REVIEWER_TOKEN"


def token_from_env(flag: str | None) -> str | None:
    """The token from ``--token``, else from ``$SPEECHPIPE_TOKEN``; empty means none."""
    return flag or os.environ.get(TOKEN_ENV) or None


def admin_token_from_env(flag: str | None) -> str | None:
    """The admin token from ``--admin-token``, else from ``$SPEECHPIPE_ADMIN_TOKEN``; empty means none."""
    return flag or os.environ.get(ADMIN_TOKEN_ENV) or None


def reviewer_token_from_env(flag: str | None) -> str | None:
    """The reviewer token from ``--reviewer-token``, else from ``$SPEECHPIPE_REVIEWER_TOKEN``."""
    return flag or os.environ.get(REVIEWER_TOKEN_ENV) or None
