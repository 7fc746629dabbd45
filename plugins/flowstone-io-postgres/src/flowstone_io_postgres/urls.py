"""Database URLs: accepted spellings, normalisation to asyncpg, and safe display.

``FLOWSTONE_DATABASE_URL`` is read only when a store, IO manager or reader is constructed
without an explicit URL, never at import.
"""

from __future__ import annotations

import os

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from flowstone.errors import UsageError

__all__ = ["ENV_VAR", "normalize_url", "resolve_url", "safe_url"]

ENV_VAR = "FLOWSTONE_DATABASE_URL"

_ACCEPTED = {"postgresql", "postgres"}


def normalize_url(url: str | URL) -> URL:
    """Parse a Postgres URL and point it at the asyncpg driver.

    Accepts ``postgresql://``, ``postgres://`` and ``postgresql+asyncpg://``; another
    ``postgresql+<driver>://`` (e.g. a psycopg URL shared with other tools) names the same
    server, so it is accepted too and run with asyncpg.

    Raises:
        UsageError: the URL does not parse or names another database or driver.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError as exc:
        raise UsageError(
            "could not parse the database URL; expected something like "
            "postgresql://user:password@host:5432/dbname"
        ) from exc
    if parsed.drivername.split("+", 1)[0] not in _ACCEPTED:
        raise UsageError(
            f"unsupported database URL scheme {parsed.drivername!r} in "
            f"{parsed.render_as_string(hide_password=True)}: flowstone-io-postgres accepts "
            "postgresql://, postgres:// or postgresql+asyncpg://"
        )
    return parsed.set(drivername="postgresql+asyncpg")


def resolve_url(url: str | URL | None) -> URL:
    """Return the normalised ``url``, or the one in ``FLOWSTONE_DATABASE_URL`` when None.

    Raises:
        UsageError: no URL given and the environment variable is unset or empty.
    """
    if url is None:
        url = os.environ.get(ENV_VAR, "")
        if not url:
            raise UsageError(
                f"no database URL: pass url=... or set {ENV_VAR} "
                "(e.g. postgresql://postgres@127.0.0.1:5432/flowstone)"
            )
    return normalize_url(url)


def safe_url(url: URL) -> str:
    """The URL as text with the password masked, for messages and logs."""
    return url.render_as_string(hide_password=True)


def database_identity(url: URL) -> str:
    """Which database ``url`` names (server, port, database, user; no password, no driver):
    two stores with the same identity can share a transaction's work."""
    return (
        f"postgresql://{url.username or ''}@{url.host or ''}:{url.port or 5432}/"
        f"{url.database or ''}"
    )
