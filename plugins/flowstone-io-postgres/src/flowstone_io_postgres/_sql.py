"""Shared plumbing for the SQL layer: statement cache, JSON columns, error translation."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import TextClause, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from flowstone.errors import StorageError

__all__ = ["Sql", "dump_json", "load_json", "run_tx", "sqlstate", "storage_error"]

T = TypeVar("T")

# deadlock_detected, serialization_failure: safe to retry the whole transaction.
_RETRYABLE = frozenset({"40P01", "40001"})
_TX_ATTEMPTS = 5


class Sql:
    """Per-schema cache of ``text()`` statements; templates name the schema ``{s}``."""

    __slots__ = ("_cache", "schema_sql")

    def __init__(self, schema_sql: str) -> None:
        self.schema_sql = schema_sql
        self._cache: dict[str, TextClause] = {}

    def __call__(self, template: str) -> TextClause:
        clause = self._cache.get(template)
        if clause is None:
            clause = text(template.replace("{s}", self.schema_sql))
            self._cache[template] = clause
        return clause


def dump_json(value: Mapping[str, Any] | Any, *, what: str) -> str:
    """JSON text for a jsonb parameter; strict (no NaN), so the database accepts it.

    Raises:
        StorageError: naming ``what`` (e.g. "materialization metadata") when not JSON-able.
    """
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StorageError(
            f"cannot store the {what}: {exc}. It must be JSON-able (str keys; str, int, finite "
            "float, bool, None, list, dict); convert other values (dates, objects) to strings."
        ) from exc


def load_json(value: Any) -> Any:
    """Decode a json/jsonb column read through ``text()`` (arrives as text)."""
    if isinstance(value, str | bytes):
        return json.loads(value)
    return value


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy error, if any."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return str(code) if code else None


def storage_error(exc: BaseException, *, action: str, where: str) -> StorageError:
    """A StorageError naming the action and the (password-masked) database."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        detail = f"{type(exc.orig).__name__}: {exc.orig}".splitlines()[0]
    elif isinstance(exc, SQLAlchemyError):
        detail = str(exc).splitlines()[0]
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return StorageError(f"{action} failed on PostgreSQL at {where}: {detail}")


async def run_tx(engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run ``work`` in one READ COMMITTED transaction, retrying deadlock victims."""
    attempt = 0
    while True:
        attempt += 1
        try:
            async with engine.begin() as conn:
                return await work(conn)
        except DBAPIError as exc:
            if sqlstate(exc) in _RETRYABLE and attempt < _TX_ATTEMPTS:
                continue
            raise
