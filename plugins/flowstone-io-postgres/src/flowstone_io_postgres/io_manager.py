"""PostgresIOManager: asset values in a PostgreSQL table.

Each value is one row, written by one ``INSERT ... ON CONFLICT DO UPDATE`` (atomic: a value
is either fully there or not at all). The row key -- and the location returned to
FlowStone -- is ``postgres:<uuid5>`` derived from the run-scoped storage key, so storing
the same key again replaces the row in place and different keys never collide.

Formats (column ``format``):

* ``json`` -- everything the core codec (:mod:`flowstone.codec`) can represent, in the
  ``value_json`` column of type ``json``. ``json`` rather than ``jsonb`` because ``jsonb``
  reorders object keys and rewrites numbers (``1e16`` would come back as an ``int``);
  ``json`` keeps the codec's text verbatim yet stays queryable (``value_json->>'field'``).
* ``bin`` -- raw ``bytes``, in ``data`` (``bytea``).
* ``arrow`` -- a ``pyarrow.Table`` as an Arrow IPC stream in ``data`` (needs the
  ``arrow`` extra; pyarrow is imported only when such a value is stored or loaded).
* ``pickle`` -- only with ``allow_pickle=True``, for values JSON cannot represent.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from flowstone.codec import EncodedValue, decode_from_storage, encode_for_storage
from flowstone.errors import StorageError, ValueNotFoundError
from flowstone.protocols import StorageKey
from flowstone.records import StagedValue
from flowstone_io_postgres._runtime import AsyncRuntime, Connections, PoolOptions
from flowstone_io_postgres._sql import call, compile_named
from flowstone_io_postgres._values_table import PREFETCH_PREFIX, StagedWrite, asset_values_ddl
from flowstone_io_postgres.identifiers import parse_qualified_name
from flowstone_io_postgres.urls import database_identity, resolve_url, safe_url

__all__ = ["PostgresIOManager"]

_LOCATION = re.compile(r"postgres:[0-9a-f]{32}")
# Fixed namespace so locations are stable across processes and releases.
_NAMESPACE = uuid.UUID("5f0c7a52-56a1-4c1e-9d55-8c3b1b0f2a41")


def _readable(value: str) -> str:
    """Text PostgreSQL accepts (no NUL, no lone surrogates); descriptive columns only."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


class PostgresIOManager:
    """Stores asset values in one PostgreSQL table.

    Args:
        url: database URL; None reads ``FLOWSTONE_DATABASE_URL`` now (at construction).
        table: ``"schema.table"`` (or ``"table"`` in ``public``). The default,
            ``flowstone.asset_values``, is created by ``flowstone db upgrade``; any table is
            created on first use if missing, with the same shape. Validated and quoted.
        name: the IO manager's name, recorded in materializations.
        allow_pickle: pickle values the JSON codec cannot represent, and unpickle them on
            load. Unpickling runs arbitrary code: enable only for data you trust.
        pool_size: connections kept open per process.
        runtime: run on these connections instead of opening its own (a run store's
            :attr:`~flowstone_io_postgres.PostgresRunStore.runtime`: one connection budget
            for both); :meth:`close` then leaves them to their owner.

    Example::

        values = PostgresIOManager("postgresql://postgres@127.0.0.1/flowstone")
        location = values.store(StorageKey("sales", "orders", "", "run-1"), [1, 2, 3])
        values.load(location)  # [1, 2, 3]
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        table: str = "flowstone.asset_values",
        name: str = "postgres",
        allow_pickle: bool = False,
        pool_size: int = 4,
        runtime: AsyncRuntime | None = None,
    ) -> None:
        self.name = name
        self.allow_pickle = allow_pickle
        self.table = parse_qualified_name(table)
        self._url = resolve_url(url)
        self._where = safe_url(self._url)
        self._owns_runtime = runtime is None
        self._runtime = runtime or AsyncRuntime(
            self._url,
            PoolOptions(max_size=max(1, 2 * pool_size), application_name="flowstone-io-manager"),
            name="flowstone-postgres-io",
        )  # fmt: skip
        t = self.table.sql
        self._upsert_sql = (
            f"INSERT INTO {t} (location, pipeline, asset, partition, run_id, item, format, "
            "value_json, data, created_at) VALUES (:loc, :pipeline, :asset, :partition, :run_id, "
            ":item, :format, CAST(:value_json AS json), :data, now()) ON CONFLICT (location) DO "
            "UPDATE SET format = EXCLUDED.format, value_json = EXCLUDED.value_json, "
            "data = EXCLUDED.data, created_at = EXCLUDED.created_at"
        )
        self._upsert = compile_named(self._upsert_sql)
        self.staging_target = database_identity(self._url)
        """The database this manager writes to: a
        :class:`~flowstone_io_postgres.PostgresRunStore` on the same one writes staged values
        in the step's ``finish_step`` transaction (see :meth:`stage`)."""
        self._select = compile_named(
            f"SELECT format, value_json::text, data FROM {t} WHERE location = :loc"
        )
        # one primary-key probe per location, whatever plan the prepared statement caches
        self._select_many = compile_named(
            "SELECT v.* FROM unnest(CAST(:locs AS text[])) AS k(loc), LATERAL (SELECT "
            f"location, format, value_json::text, data FROM {t} WHERE location = k.loc "
            "OFFSET 0) AS v"
        )
        self._exists = compile_named(f"SELECT 1 FROM {t} WHERE location = :loc")
        self._delete = compile_named(f"DELETE FROM {t} WHERE location = :loc")
        self._written = compile_named(
            f"SELECT location FROM {t} WHERE pipeline = :p AND created_at < :cutoff "
            "AND created_at >= COALESCE(CAST(:since AS timestamptz), '-infinity') "
            "AND location > :after ORDER BY location LIMIT 500"
        )
        self._ready = False
        self._ready_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresIOManager({self._where!r}, table={str(self.table)!r})"

    # --- plumbing ----------------------------------------------------------------------
    def _ensure_table(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return

            async def create(db: Connections) -> None:
                async with db.connection() as conn, conn.transaction():
                    # Serialise concurrent first uses: CREATE ... IF NOT EXISTS can still race.
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext($1))",
                        f"flowstone_io_postgres.table.{self.table}",
                    )
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.table.schema}"')
                    await conn.execute(asset_values_ddl(self.table.sql))

            self._call(create, action=f"creating table {self.table}")
            self._ready = True

    def _call(self, work: Any, *, action: str) -> Any:
        return call(self._runtime, work, action=action, where=self._where)

    def _execute(self, statement: Any, params: dict[str, Any], *, action: str) -> list[Any]:
        self._ensure_table()
        args = statement.args(params)

        async def work(db: Connections) -> list[Any]:
            return await db.fetch(statement.sql, *args)

        rows: list[Any] = self._call(work, action=action)
        return rows

    def _check(self, location: str) -> str:
        if not isinstance(location, str) or _LOCATION.fullmatch(location) is None:
            raise ValueNotFoundError(
                f"{location!r} is not a location written by PostgresIOManager "
                "(expected 'postgres:' followed by 32 hex digits)"
            )
        return location

    @staticmethod
    def location_for(key: StorageKey) -> str:
        """The location :meth:`store` uses for ``key`` (deterministic, collision-free)."""
        parts: list[object] = [key.pipeline, key.asset, key.partition, key.run_id, key.item]
        if key.attempt:  # every attempt writes its own place (see StorageKey)
            parts.append(int(key.attempt))
        ident = json.dumps(parts)
        return "postgres:" + uuid.uuid5(_NAMESPACE, ident).hex

    # --- IOManager ---------------------------------------------------------------------
    def store(self, key: StorageKey, value: object) -> str:
        """Encode ``value`` and upsert it in one statement; return its location.

        Raises:
            EncodingError: the value cannot be encoded (nothing is written).
            StorageError: the database failed.
        """
        location, params, _ = self._encode(key, value)
        self._execute(self._upsert, params, action=f"storing the value of asset {key.asset!r}")
        return location

    def stage(self, key: StorageKey, value: object) -> StagedValue:
        """Encode ``value`` without writing it: the write, for a run store on the same
        database to run inside ``finish_step`` (the engine does this by itself).

        Raises:
            EncodingError: the value cannot be encoded.
        """
        location, params, encoded = self._encode(key, value)
        return StagedValue(
            location=location,
            target=self.staging_target,
            payload=StagedWrite(self._upsert_sql, params),
            encoded=encoded,
        )

    def _encode(
        self, key: StorageKey, value: object
    ) -> tuple[str, dict[str, object], tuple[str, str | None, bytes | None]]:
        """``(location, upsert parameters, (format, value_json, data))`` of ``value``."""
        self._ensure_table()
        encoded = _encode_arrow(value) or encode_for_storage(
            value, asset=key.asset, allow_pickle=self.allow_pickle
        )
        location = self.location_for(key)
        is_json = encoded.format == "json"
        value_json = encoded.data.decode("utf-8") if is_json else None
        data = None if is_json else encoded.data
        params: dict[str, object] = {
            "loc": location,
            "pipeline": _readable(key.pipeline),
            "asset": _readable(key.asset),
            "partition": _readable(key.partition),
            "run_id": _readable(key.run_id),
            "item": key.item,
            "format": encoded.format,
            "value_json": value_json,
            "data": data,
        }
        return location, params, (encoded.format, value_json, data)

    @property
    def prefetch_source(self) -> str | None:
        """Where a :class:`~flowstone_io_postgres.PostgresRunStore` on the same database
        (see :attr:`staging_target`) reads the values a continuation needs, in the
        ``finish_step`` that claims it (None until this process knows the table exists)."""
        return f"{PREFETCH_PREFIX}{self.table}" if self._ready else None

    def decode_prefetched(self, location: str, encoded: object) -> object:
        """A value the run store read from this manager's table (or :meth:`stage` encoded):
        ``(format, value_json, data)``, decoded exactly as :meth:`load` does."""
        if not isinstance(encoded, tuple) or len(encoded) != 3:
            raise StorageError(f"the value for {location} is not (format, value_json, data)")
        fmt, value_json, data = encoded
        return self._decode(self._check(location), fmt, value_json, data)

    def load(self, location: str) -> object:
        """Return the value at ``location``.

        Raises:
            ValueNotFoundError: nothing is stored there.
            StorageError: pickled data without ``allow_pickle``, or corrupt data.
        """
        rows = self._execute(
            self._select, {"loc": self._check(location)}, action=f"loading {location}"
        )
        if not rows:
            raise ValueNotFoundError(
                f"no value at {location} in table {self.table} ({self._where}); it was deleted "
                "or never stored. Re-materialize the asset."
            )
        fmt, value_json, data = rows[0]
        return self._decode(location, fmt, value_json, data)

    def load_many(self, locations: Sequence[str]) -> list[object]:
        """The values at ``locations``, in order, read in one statement (how a step with
        several inputs loads them).

        Raises:
            ValueNotFoundError: one of them is not stored (the message names it).
            StorageError: as :meth:`load`.
        """
        wanted = [self._check(loc) for loc in locations]
        rows = self._execute(
            self._select_many, {"locs": list(dict.fromkeys(wanted))},
            action=f"loading {len(wanted)} values",
        )
        found = {loc: (fmt, vj, data) for loc, fmt, vj, data in rows}
        out: list[object] = []
        for loc in wanted:
            if loc not in found:
                raise ValueNotFoundError(
                    f"no value at {loc} in table {self.table} ({self._where}); it was deleted "
                    "or never stored. Re-materialize the asset."
                )
            out.append(self._decode(loc, *found[loc]))
        return out

    def _decode(self, location: str, fmt: Any, value_json: str | None, data: Any) -> object:
        if fmt == "arrow":
            return _decode_arrow(bytes(data), location)
        is_json = fmt == "json" and value_json is not None
        raw = value_json.encode("utf-8") if is_json else bytes(data)  # type: ignore[union-attr]
        return decode_from_storage(
            EncodedValue(fmt, raw), allow_pickle=self.allow_pickle, location=location
        )

    def exists(self, location: str) -> bool:
        if not isinstance(location, str) or _LOCATION.fullmatch(location) is None:
            return False
        return bool(self._execute(self._exists, {"loc": location}, action="checking a value"))

    def delete(self, location: str) -> None:
        """Remove the value; deleting a missing value is not an error."""
        self._execute(self._delete, {"loc": self._check(location)}, action="deleting a value")

    def stored_before(
        self, cutoff: datetime, *, pipeline: str, since: datetime | None = None
    ) -> Iterator[str]:
        """Locations of ``pipeline``'s values written in ``[since, cutoff)`` (see
        :class:`~flowstone.protocols.ValuePruning`), read 500 at a time."""
        after = ""
        while True:
            rows = self._execute(
                self._written,
                {"p": pipeline, "cutoff": cutoff, "since": since, "after": after},
                action="listing values to prune",
            )
            yield from (str(r[0]) for r in rows)
            if len(rows) < 500:
                return
            after = str(rows[-1][0])

    def close(self) -> None:
        """Close the manager's connections and its event loop (a later call reopens them);
        connections it shares with a run store are left to the store."""
        if self._owns_runtime:
            self._runtime.close()


def _encode_arrow(value: object) -> EncodedValue | None:
    # Only a process that already imported pyarrow can hold a pyarrow.Table.
    pa = sys.modules.get("pyarrow")
    if pa is None or not isinstance(value, pa.Table):
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, value.schema) as writer:
        writer.write_table(value)
    return EncodedValue("arrow", sink.getvalue().to_pybytes())  # type: ignore[arg-type]


def _decode_arrow(data: bytes, location: str) -> object:
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise StorageError(
            f"the value at {location} is an Arrow table and pyarrow is not installed; "
            "pip install 'flowstone-io-postgres[arrow]'"
        ) from exc
    try:
        return pa.ipc.open_stream(data).read_all()
    except pa.ArrowInvalid as exc:
        raise StorageError(f"the Arrow data at {location} is corrupt: {exc}") from exc
