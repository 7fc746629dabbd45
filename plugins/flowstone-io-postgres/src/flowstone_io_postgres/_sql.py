"""Shared plumbing for the SQL layer: named-parameter statements, JSON columns, transactions
and error translation, on asyncpg.

JSON columns are encoded by :func:`flowstone.store_rules.to_json`, as in every store.
Statements are written with ``:name`` placeholders (readable, order-free) and compiled once
per schema to asyncpg's ``$n`` form; asyncpg then prepares each distinct text once per
connection and reuses it (its statement cache), so a hot call is Bind + Execute only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import asyncpg

if TYPE_CHECKING:
    from flowstone_io_postgres._runtime import AsyncRuntime, Connections

from flowstone.errors import FlowStoneError, StorageError, UsageError

__all__ = [
    "PARAM",
    "Db",
    "Sql",
    "Stmt",
    "call",
    "compile_named",
    "is_db_error",
    "load_json",
    "run_tx",
    "sqlstate",
    "storage_error",
]

T = TypeVar("T")


class Db(Protocol):
    """What the SQL layer needs: a connection, or the runtime's ``Connections``."""

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def fetchmany(self, query: str, args: list[list[Any]]) -> list[Any]: ...

# deadlock_detected, serialization_failure: safe to retry the whole transaction.
RETRYABLE = frozenset({"40P01", "40001"})
TX_ATTEMPTS = 5

# ``:name`` but not ``::type`` casts and not ``\:`` (an escaped colon), as SQLAlchemy's text().
PARAM = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


class Stmt:
    """A compiled statement: asyncpg SQL text plus the parameter names in ``$n`` order."""

    __slots__ = ("names", "sql")

    def __init__(self, sql: str, names: tuple[str, ...]) -> None:
        self.sql = sql
        self.names = names

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """Positional arguments for ``params``.

        Raises:
            UsageError: a placeholder has no value.
        """
        try:
            return [params[n] for n in self.names]
        except KeyError as exc:
            raise UsageError(f"no value for the SQL parameter :{exc.args[0]}") from None

    async def fetch(self, db: Db, params: Mapping[str, Any]) -> list[asyncpg.Record]:
        """All rows."""
        return list(await db.fetch(self.sql, *self.args(params)))

    async def fetchrow(self, db: Db, params: Mapping[str, Any]) -> asyncpg.Record | None:
        """The first row, or None."""
        return await db.fetchrow(self.sql, *self.args(params))

    async def fetchval(self, db: Db, params: Mapping[str, Any]) -> Any:
        """The first column of the first row, or None."""
        return await db.fetchval(self.sql, *self.args(params))

    async def execute(self, db: Db, params: Mapping[str, Any]) -> None:
        """Run for effect (a prepared statement, like the other methods)."""
        await db.fetch(self.sql, *self.args(params))


def compile_named(template: str) -> Stmt:
    """Turn ``:name`` placeholders into ``$1..$n`` (a repeated name reuses its number)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    sql = PARAM.sub(number, template).replace("\\:", ":")
    return Stmt(sql, tuple(names))


class Sql:
    """Per-schema cache of compiled statements; templates name the schema ``{s}``."""

    __slots__ = ("_cache", "schema_sql")

    def __init__(self, schema_sql: str) -> None:
        self.schema_sql = schema_sql
        self._cache: dict[str, Stmt] = {}

    def __call__(self, template: str) -> Stmt:
        stmt = self._cache.get(template)
        if stmt is None:
            stmt = compile_named(template.replace("{s}", self.schema_sql))
            self._cache[template] = stmt
        return stmt


def load_json(value: Any) -> Any:
    """Decode a json/jsonb column (asyncpg hands them over as text)."""
    if isinstance(value, str | bytes):
        return json.loads(value)
    return value


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of a server error, if any."""
    code = getattr(exc, "sqlstate", None)
    return str(code) if code else None


def is_db_error(exc: BaseException) -> bool:
    """True for failures of the database or the connection to it (not programming errors)."""
    return isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError | TimeoutError)


def storage_error(exc: BaseException, *, action: str, where: str) -> StorageError:
    """A StorageError naming the action and the (password-masked) database."""
    detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return StorageError(f"{action} failed on PostgreSQL at {where}: {detail}")


def call(
    runtime: AsyncRuntime, work: Callable[[Connections], Awaitable[T]], *, action: str,
    where: str,
) -> T:
    """Run ``work`` on ``runtime``; a database failure becomes a StorageError naming
    ``action`` and ``where`` (the masked database). FlowStone errors and programming errors
    pass through unchanged. The store, the IO manager and the reader all call through this.
    """
    try:
        return runtime.run(work)
    except FlowStoneError:
        raise
    except Exception as exc:
        if sqlstate(exc) == "23505":
            raise StorageError(
                f"{action}: a record with the same key already exists ({exc})"
            ) from exc
        if is_db_error(exc):
            raise storage_error(exc, action=action, where=where) from exc
        raise


async def run_tx(
    db: Connections, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """Run ``work`` in one READ COMMITTED transaction, retrying deadlock victims."""
    attempt = 0
    while True:
        attempt += 1
        try:
            async with db.connection() as conn, conn.transaction():
                return await work(conn)
        except asyncpg.PostgresError as exc:
            if sqlstate(exc) in RETRYABLE and attempt < TX_ATTEMPTS:
                continue
            raise
