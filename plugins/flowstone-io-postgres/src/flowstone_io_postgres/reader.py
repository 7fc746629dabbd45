"""PostgresItemReader: scatter items from a table or query, by keyset pagination.

Each page is ``... WHERE key > :last ORDER BY key LIMIT :n`` with bound values, so reading
page N costs the same as reading page 1 (no OFFSET), rows inserted behind the cursor are
not re-read, and a checkpoint is just the last key returned.

Identifiers (table, key column, columns) are validated and quoted. A raw ``query`` is
different: it is SQL text written by the pipeline author and run as is, as a subquery.
Treat it as trusted code -- never build it from user input; pass values through ``params``
(bound parameters, ``:name`` placeholders).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from flowstone.errors import UsageError
from flowstone_io_postgres._runtime import AsyncRuntime, Connections, PoolOptions
from flowstone_io_postgres._sql import Stmt, call, compile_named
from flowstone_io_postgres.identifiers import parse_qualified_name, quote_ident
from flowstone_io_postgres.urls import resolve_url, safe_url

__all__ = ["PostgresItemReader"]

# Key types a checkpoint can carry through JSON and back to the same Python type.
_TO_JSON: dict[type, tuple[str, Callable[[Any], str]]] = {
    datetime: ("datetime", datetime.isoformat),
    date: ("date", date.isoformat),
    Decimal: ("decimal", str),
    uuid.UUID: ("uuid", str),
}
_FROM_JSON: dict[str, Callable[[str], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "decimal": Decimal,
    "uuid": uuid.UUID,
}


class PostgresItemReader:
    """Reads rows (as dicts) from a table or a trusted query, ordered by a unique key.

    Args:
        query: a ``SELECT`` statement you own (trusted code, see the module docstring).
            Give either ``query`` or ``table``.
        table: ``"schema.table"`` or ``"table"`` (validated and quoted).
        key_column: a column with unique, non-null, orderable values (e.g. the primary key);
            rows come in its order and checkpoints record its last value.
        columns: ``"*"`` or a list of column names (validated and quoted); ignored with
            ``query`` (select the columns there). The key column must be among them.
        page_size: the most rows fetched per ``read`` call.
        url: database URL; None reads ``FLOWSTONE_DATABASE_URL`` now (at construction).
        params: bound parameters for ``query``.

    Example::

        fs.Scatter(reader=PostgresItemReader(table="shop.customers", key_column="id",
                                             columns=["id", "email"]))
    """

    def __init__(
        self,
        query: str | None = None,
        *,
        table: str | None = None,
        key_column: str,
        columns: str | Sequence[str] = "*",
        page_size: int = 1000,
        url: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        if (query is None) == (table is None):
            raise UsageError("PostgresItemReader needs exactly one of query=... or table=...")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise UsageError(f"PostgresItemReader page_size must be an int >= 1, got {page_size!r}")
        key = quote_ident(key_column, what="key column")
        if query is not None:
            if not query.lstrip().lower().startswith(("select", "with")):
                raise UsageError("PostgresItemReader query must be a SELECT (or WITH ... SELECT)")
            source = f"({query.strip().rstrip(';')}) AS q"
            cols = "*"
        else:
            source = parse_qualified_name(table or "").sql + " AS q"
            if isinstance(columns, str):
                if columns != "*":
                    raise UsageError("columns must be '*' or a list of column names")
                cols = "*"
            else:
                names = [quote_ident(c, what="column") for c in columns]
                if key not in names:
                    raise UsageError(f"columns must include the key column {key_column!r}")
                cols = ", ".join(names)
        self.key_column = key_column
        self.page_size = page_size
        self._url = resolve_url(url)
        self._where = safe_url(self._url)
        self._params = dict(params or {})
        self._first = compile_named(
            f"SELECT {cols} FROM {source} ORDER BY q.{key} LIMIT :fs_limit"
        )
        self._next = compile_named(
            f"SELECT {cols} FROM {source} WHERE q.{key} > :fs_last ORDER BY q.{key} LIMIT :fs_limit"
        )
        self._count = compile_named(f"SELECT count(*) FROM {source}")
        self._reset()

    def _reset(self) -> None:
        self._runtime: AsyncRuntime | None = None
        self._last: Any = None
        self._started = False
        self._done = False

    def __copy__(self) -> PostgresItemReader:
        """A fresh, un-initialised reader with the same configuration."""
        clone = object.__new__(PostgresItemReader)
        clone.__dict__.update({k: v for k, v in self.__dict__.items()})
        clone._reset()
        return clone

    # --- plumbing ----------------------------------------------------------------------
    def _rows(self, statement: Stmt, params: dict[str, Any]) -> list[Any]:
        if self._runtime is None:
            raise UsageError("PostgresItemReader: call init(deps) before reading")
        args = statement.args({**self._params, **params})

        async def work(db: Connections) -> list[Any]:
            return await db.fetch(statement.sql, *args)

        return call(self._runtime, work, action="reading scatter items", where=self._where)

    # --- ItemReader --------------------------------------------------------------------
    def init(self, deps: Mapping[str, Any]) -> None:
        """Start a run: forget any position from an earlier run."""
        if self._runtime is not None:
            self._runtime.close()
        self._reset()
        self._runtime = AsyncRuntime(
            self._url,
            PoolOptions(max_size=2, application_name="flowstone-reader"),
            name="flowstone-postgres-reader",
        )

    def read(self, max_items: int) -> list[dict[str, Any]]:
        """Return up to ``min(max_items, page_size)`` rows after the last one returned."""
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise UsageError(f"read(max_items={max_items!r}): max_items must be an int >= 1.")
        if self._done:
            return []
        limit = min(max_items, self.page_size)
        if self._started:
            rows = self._rows(self._next, {"fs_last": self._last, "fs_limit": limit})
        else:
            rows = self._rows(self._first, {"fs_limit": limit})
        items = [dict(r.items()) for r in rows]
        if items:
            self._last = items[-1][self.key_column]
            self._started = True
        if len(items) < limit:
            self._done = True
        return items

    def count(self) -> int | None:
        """The total number of rows (one ``count(*)``)."""
        return int(self._rows(self._count, {})[0][0])

    def checkpoint(self) -> dict[str, Any]:
        """``{"last_key": ...}`` (JSON-able; dates, decimals and UUIDs are tagged)."""
        if not self._started:
            return {"last_key": None, "started": False}
        kind, convert = _TO_JSON.get(type(self._last), (None, None))
        if convert is None:
            return {"last_key": self._last, "started": True}
        return {"last_key": convert(self._last), "key_type": kind, "started": True}

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        """Continue right after the key recorded in ``checkpoint``."""
        if not isinstance(checkpoint, Mapping) or "last_key" not in checkpoint:
            raise UsageError(
                f"PostgresItemReader.restore({checkpoint!r}): expected a dict returned by "
                "checkpoint(), with a 'last_key'"
            )
        started = bool(checkpoint.get("started", checkpoint["last_key"] is not None))
        last = checkpoint["last_key"]
        kind = checkpoint.get("key_type")
        if kind is not None:
            if kind not in _FROM_JSON:
                raise UsageError(f"PostgresItemReader.restore: unknown key_type {kind!r}")
            last = _FROM_JSON[kind](last)
        self._last, self._started, self._done = last, started, False

    def close(self) -> None:
        """Release the connection; idempotent. ``init`` may be called again afterwards."""
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None
