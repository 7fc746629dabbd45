"""``CeleryScatterCoordinator``: a scatter step whose items run across Celery workers.

``execute`` runs on the worker that claimed the scatter step. It creates the barrier and
all item rows in one transaction (items from a function), or the barrier alone (items from
an :class:`~flowstone.protocols.ItemReader`, appended page by page by a reader task), and
returns :class:`~flowstone.scatter.Deferred`. The engine records the step as waiting and
then calls ``start``, which enqueues the first window. From then on every finished chunk
records its items, tops the window up and, for the last one, wins the barrier's single
transition to ``finishing`` and runs the gather (see :mod:`flowstone_scatter.barrier`).
A ``pipeline.retry_failed_items`` run's barrier starts with the earlier run's succeeded
items copied in, so only the failed (or never-run) items are enqueued.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from flowstone.codec import decode_value, encode_value
from flowstone.defaults.scatter_units import FIRST_ERRORS, threshold_message
from flowstone.engine import (
    ScatterRequest,
    StepRunner,
    complete_deferred,
    item_key,
    resolve_inputs,
)
from flowstone.errors import SignalError, UsageError
from flowstone.partitions import decode_partition
from flowstone.scatter import Deferred, Scatter, ScatterCounts
from flowstone_celery import CeleryExecutor
from flowstone_io_postgres import PostgresRunStore
from flowstone_scatter import barrier, finish
from flowstone_scatter.db import Database
from flowstone_scatter.messages import CHUNK_TASK, READ_TASK, ChunkMessage

if TYPE_CHECKING:
    from flowstone.asset import AssetDef

__all__ = ["CHUNK_SECONDS", "MAX_CHUNK_UNITS", "MAX_ITEM_BYTES", "CeleryScatterCoordinator",
           "build_rows", "item_size"]

log = logging.getLogger("flowstone.scatter")
_DEPS_CACHE = 16
_TERMINAL = frozenset({"succeeded", "failed", "skipped", "upstream_failed", "cancelled"})
MAX_ITEM_BYTES: Final = 1 << 20
"""The most bytes one scatter item may take encoded (1 MiB): items are stored in the barrier's
items table and read back for every attempt, so bigger payloads belong in the asset (scatter
over ids or object-store keys and load them there), like keys over
:data:`~flowstone.scatter.MAX_ITEM_KEY_LENGTH`."""


CHUNK_SECONDS: Final = 0.2
"""The run time a chunk message aims at, when its size is the default: each chunk's pace
(seconds per unit, measured by the worker that ran it) sizes the next ones, so trivial
items travel many to a message and slow ones few (see :meth:`CeleryScatterCoordinator.
chunk_bounds`)."""
MAX_CHUNK_UNITS: Final = 1000
"""The most units (items, or batches) a default-sized chunk message grows to."""


def item_size(item: Any) -> int:
    """Bytes of an item as :class:`~flowstone.scatter.Batching` ``max_bytes`` counts them."""
    return len(json.dumps(item, default=str).encode())


def _payload(item: Any, index: int, asset: str) -> str:
    """``item`` encoded for its row; UsageError if it is over :data:`MAX_ITEM_BYTES`."""
    data = encode_value(item, asset=asset)
    if len(data) > MAX_ITEM_BYTES:
        raise UsageError(
            f"scatter item {index} of asset {asset!r} is {len(data)} bytes encoded; the limit "
            f"is {MAX_ITEM_BYTES}. Scatter over ids or object-store keys (with "
            "Scatter(key=...)) and load the payload in the asset")
    return data.decode()


def build_rows(
    sc: Scatter, asset: str, items: Sequence[Any], first_index: int, first_unit: int,
    seen: set[str],
) -> tuple[list[tuple[int, int, str, str]], int]:
    """``(idx, unit, key, encoded item)`` rows for ``items``; returns them and the next unit.

    Keys are normalised and size-checked (:func:`item_key`), payloads size-checked
    (:data:`MAX_ITEM_BYTES`); an item whose key is in
    ``seen`` is dropped (equal keys run once). A unit is one item, or one batch cut by
    ``max_items`` / ``max_bytes``.
    """
    rows: list[tuple[int, int, str, str]] = []
    b = sc.batching
    unit, in_unit, size = first_unit, 0, 0
    for offset, item in enumerate(items):
        index = first_index + offset
        key = item_key(sc, item, index, asset)
        if key in seen:
            continue
        seen.add(key)
        if b is None:
            rows.append((index, unit, key, _payload(item, index, asset)))
            unit += 1
            continue
        n = item_size(item) if b.max_bytes is not None else 0  # a third JSON dump otherwise
        full = (b.max_items is not None and in_unit >= b.max_items) or (
            b.max_bytes is not None and in_unit > 0 and size + n > b.max_bytes)
        if full:
            unit, in_unit, size = unit + 1, 0, 0
        rows.append((index, unit, key, _payload(item, index, asset)))
        in_unit, size = in_unit + 1, size + n
    if b is not None and in_unit:
        unit += 1
    return rows, unit


class CeleryScatterCoordinator:
    """Runs scatter items on Celery workers with the barrier in Postgres.

    Args:
        database_url: the Postgres holding the barrier. Default: the pipeline's
            :class:`~flowstone_io_postgres.PostgresRunStore` (its connections and its
            ``schema``); with another store, ``FLOWSTONE_DATABASE_URL`` (read on first use).
        schema: the schema of the tables with ``database_url`` (default ``flowstone``).
        chunk_size: items (or batches) per message. Default: adaptive, starting at
            ``min(100, max(1, max_concurrent // 4))`` and moving with the items' pace
            towards :data:`CHUNK_SECONDS` of work per message, up to ``max_concurrent //
            4`` (a window spans at least four messages) and :data:`MAX_CHUNK_UNITS`.
        pool_size: Postgres connections per process with ``database_url`` (with the
            pipeline's store, the scatter shares the store's connections).

    The tables are created by ``flowstone db upgrade`` (or the store's ``auto_migrate``).
    Selected automatically when the executor is Celery and this plugin is installed.
    """

    name = "celery"

    def __init__(self, database_url: str | None = None, *, schema: str = "flowstone",
                 chunk_size: int | None = None, pool_size: int = 4) -> None:
        if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
            raise UsageError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        self._url = database_url
        self._schema = schema
        self._chunk_size = chunk_size
        self._pool_size = pool_size
        self._db: Database | None = None
        self._lock = threading.Lock()
        self._inputs: OrderedDict[tuple[str, str, str], tuple[dict[str, Any], Any]] = (
            OrderedDict())

    # --- plumbing -------------------------------------------------------------------------
    def database(self, runner: StepRunner) -> Database:
        """The barrier tables of this process: on the pipeline's Postgres run store (its
        connections and schema), checked to be at their head revision once."""
        if self._db is None:
            with self._lock:
                if self._db is None:
                    self._db = self._open(runner.runtime.store)
        return self._db

    def _open(self, store: object) -> Database:
        if self._url is None and isinstance(store, PostgresRunStore):
            return Database(store)
        url = self._url or os.environ.get("FLOWSTONE_DATABASE_URL")
        if not url or not url.startswith(("postgresql", "postgres")):
            raise UsageError(
                "the Celery scatter coordinator keeps its barrier in Postgres: use a "
                "PostgresRunStore (FLOWSTONE_DATABASE_URL=postgresql+asyncpg://user@host/db) "
                "or pass CeleryScatterCoordinator(database_url=...)")
        own = PostgresRunStore(url, schema=self._schema, pool_size=self._pool_size,
                               max_overflow=0)
        try:
            return Database(own, owned=True)
        except BaseException:
            own.close()
            raise

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def progress(self, pipeline: Any, run_id: str, asset: str,
                 partition: str) -> ScatterCounts | None:
        """How far the scatter of ``asset`` in ``run_id`` has got (``partition`` encoded),
        read from the barrier; None when there is no such scatter
        (:class:`~flowstone.scatter.ScatterProgress`, shown by ``flowstone runs``)."""
        from flowstone_scatter.status import read_counts

        b, counts = read_counts(self.database(pipeline.runner), run_id, asset, partition)
        return None if b is None else counts

    def chunk_units(self, sc: Scatter) -> int:
        if self._chunk_size is not None:
            return self._chunk_size
        given = sc.options.get("chunk_size")
        if given is not None:
            return max(1, int(given))
        return min(100, max(1, sc.max_concurrent // 4))

    def chunk_bounds(self, sc: Scatter) -> tuple[int, int] | None:
        """The sizes a default-sized chunk moves between, from :meth:`chunk_units` (the
        first window's size, and the least) up to a quarter of ``max_concurrent`` (so a
        window still spans four messages) and :data:`MAX_CHUNK_UNITS`; None when the size
        is fixed (``chunk_size`` given here or in ``Scatter.options``) or a ``rate_limit``
        spaces the items (a chunk's pace is then the limit's, not the items')."""
        if (self._chunk_size is not None or sc.options.get("chunk_size") is not None
                or sc.rate_per_second is not None):
            return None
        low = self.chunk_units(sc)
        return low, max(low, min(MAX_CHUNK_UNITS, sc.max_concurrent // 4))

    def send(self, runner: StepRunner, task: str, bodies: Sequence[dict[str, Any]]) -> None:
        """Publish scatter messages with the pipeline's Celery executor."""
        if not bodies:
            return
        executor = runner.runtime.executor
        if not isinstance(executor, CeleryExecutor):
            raise UsageError(
                "CeleryScatterCoordinator needs the Celery executor: build the pipeline with "
                "executor='celery' (or FLOWSTONE_EXECUTOR=celery), or use the 'inline' "
                "scatter coordinator")
        app, queue = executor.app, executor.settings.queue
        with app.producer_or_acquire() as producer:
            for body in bodies:
                app.send_task(task, args=(body,), queue=queue, producer=producer,
                              ignore_result=True, add_to_parent=False)

    def after(self, runner: StepRunner, barrier_id: int, claim: barrier.Claim) -> None:
        """Act on a transaction's decision: enqueue claimed chunks, run a won finish."""
        name = runner.runtime.name
        self.send(runner, CHUNK_TASK, [
            ChunkMessage(name, barrier_id, s, e).to_json() for s, e in claim.ranges])
        if claim.finishing:
            self.finalize(runner, barrier_id, claim.finisher)

    def kick(self, runner: StepRunner, barrier_id: int, sc: Scatter) -> None:
        """Top the window up (or finish) from the barrier's current state."""
        db = self.database(runner)
        lease = float(runner.runtime.policies.lease_seconds)
        claim = db.run(lambda c: barrier.lock_and_decide(c, db.t, barrier_id, sc, lease))
        self.after(runner, barrier_id, claim)

    def inputs(self, runner: StepRunner, a: AssetDef, run_id: str,
               partition: str) -> tuple[dict[str, Any], Any]:
        """The asset's dep values and shared batch input, cached per process."""
        key = (run_id, a.name, partition)
        with self._lock:
            hit = self._inputs.get(key)
            if hit is not None:
                self._inputs.move_to_end(key)
                return hit
        got = resolve_inputs(runner, run_id, a, decode_partition(partition))
        deps = {d: o.value for d, o in got.outcomes.items()
                if d in a.deps and o.state == "succeeded"}
        shared = None
        sc = a.scatter
        if sc is not None and sc.batching is not None and sc.batching.batch_input is not None:
            fn = sc.batching.batch_input
            shared = fn(**{k: v for k, v in deps.items() if k in _params(fn)})
        with self._lock:
            self._inputs[key] = (deps, shared)
            while len(self._inputs) > _DEPS_CACHE:
                self._inputs.popitem(last=False)
        return deps, shared

    # --- the step ---------------------------------------------------------------------------
    def execute(self, request: ScatterRequest) -> object:
        """Create (or re-open) the barrier and defer the step to the workers."""
        req = request
        sc = req.asset.scatter
        if sc is None:
            raise UsageError(f"asset {req.asset.name!r} has no Scatter")
        runner, name = req.runner, req.asset.name
        db = self.database(runner)
        token = secrets.token_urlsafe(32)
        existing = db.run(lambda c: barrier.find(c, db.t, req.run_id, name, req.partition))
        if existing is not None:
            bid = int(existing["id"])
            if existing["state"] in ("running", "finishing"):
                token = existing["token"]
            else:  # failed or cancelled before: run only what did not succeed
                db.run(lambda c: barrier.reopen(c, db.t, bid, token))
            return Deferred(token, start=lambda: self._start(runner, bid, sc))
        units_total, expected = 0, None
        rows: list[tuple[int, int, str, str]] = []
        if sc.items is not None:
            kwargs = {k: v for k, v in req.deps.items() if k in _params(sc.items)}
            items = list(sc.items(**kwargs))
            rows, units_total = build_rows(sc, name, items, 0, 0, set())
            expected = len(rows)
        bid, _ = db.run(lambda c: barrier.create(
            c, db.t, pipeline=runner.runtime.name, run_id=req.run_id, asset=name,
            partition=req.partition,
            token=token, rows=rows, units_total=units_total,
            max_concurrent=sc.max_concurrent, chunk_units=self.chunk_units(sc),
            reader_done=sc.reader is None, expected_total=expected,
            previous_run_id=req.previous_run_id))
        return Deferred(token, start=lambda: self._start(runner, bid, sc))

    def _start(self, runner: StepRunner, barrier_id: int, sc: Scatter) -> None:
        if sc.reader is not None:
            message = ChunkMessage(runner.runtime.name, barrier_id).read_json()
            self.send(runner, READ_TASK, [message])
        self.kick(runner, barrier_id, sc)

    # --- the end ----------------------------------------------------------------------------
    def finalize(self, runner: StepRunner, barrier_id: int,
                 finisher: str | None = None) -> None:
        """Finish a ``finishing`` barrier: gather (or fail) and complete the step.

        Runs under the barrier's finishing claim (``finisher``: the token the transaction
        that won ``finishing`` took; None: take it now if it is free or expired, as the
        sweeper does), renewed while the gather runs (:func:`~flowstone_scatter.finish.
        finish_lease`), so a live finisher's gather is never started a second time. The
        barrier is closed only once the step really finished: ``complete_deferred``
        applied, or the step is already terminal in the run store. Otherwise it stays
        ``finishing`` and the sweeper finishes it again once the claim expires (or at its
        next sweep if this attempt failed with an error).
        """
        db = self.database(runner)
        lease = float(runner.runtime.policies.lease_seconds)
        me = finisher or secrets.token_hex(16)
        b = finish.claim(db, barrier_id, me, lease)
        if b is None:
            return  # closed already, or another live finisher holds it
        a = runner.runtime.graph[b["asset"]]
        sc = a.scatter
        assert sc is not None
        value: Any = None
        error: str | None = b["error"]
        try:
            with finish.finish_lease(db, barrier_id, me, lease) as kept:
                if error is None and b["outcome"] == "failed":
                    error = self._threshold_message(db, b, sc)
                if error is None:
                    try:
                        values = db.run(lambda c: _stream_results(c, db, barrier_id))
                        value = sc.gather(values) if sc.gather is not None else values
                    except Exception as exc:
                        error = (f"gather of scatter asset {a.name!r} failed: "
                                 f"{type(exc).__name__}: {exc}")
                if kept.lost.is_set():
                    log.warning("scatter barrier %d of %s: another process took the finish "
                                "over while this one gathered; leaving it to that one",
                                barrier_id, a.name)
                    return
                gone: str | None = None
                try:
                    _, applied = complete_deferred(runner, b["token"], value=value,
                                                   error=error)
                except SignalError as exc:  # the step's deferred wait no longer exists
                    applied, gone = False, str(exc)
        except BaseException:
            with contextlib.suppress(Exception):
                finish.release(db, barrier_id, me)  # the next sweep finishes it
            raise
        final: str | None = "failed" if error is not None else "succeeded"
        if not applied:
            final = self._finished_as(runner, b)
        if final is None and gone is not None:
            # retrying cannot help (and would run the gather again every sweep)
            log.error("scatter barrier %d of %s [%s] in run %s cannot complete its step: %s; "
                      "closing the barrier as failed", barrier_id, a.name, b["partition"],
                      b["run_id"], gone)
            finish.close(db, barrier_id, me, "failed", f"cannot complete the step: {gone}")
            return
        if final is None:
            log.warning(
                "scatter barrier %d of %s [%s] in run %s: the step did not finish (its deferred "
                "completion was not applied and the step is not terminal); the barrier stays "
                "finishing and the sweeper finishes it again when the claim expires",
                barrier_id, a.name, b["partition"], b["run_id"])
            return
        finish.close(db, barrier_id, me, final, error if applied else None)

    @staticmethod
    def _finished_as(runner: StepRunner, b: Any) -> str | None:
        """How the scatter step ended if the run store has it terminal, else None."""
        step = runner.runtime.store.get_step(b["run_id"], b["asset"], b["partition"])
        if step is None or step.state not in _TERMINAL:
            return None
        if step.state == "succeeded":
            return "succeeded"
        return "cancelled" if step.state == "cancelled" else "failed"

    def _threshold_message(self, db: Database, b: Any, sc: Scatter) -> str:
        async def first(conn: Any) -> Any:
            return await conn.fetch(
                f"SELECT idx, key, error FROM {db.t.items} WHERE barrier_id = $1 AND state = "
                f"'failed' ORDER BY idx LIMIT {FIRST_ERRORS}", b["id"])

        rows = db.run(first)
        total = b["expected_total"] if b["expected_total"] is not None else b["total_items"]
        message = threshold_message(
            sc, b["asset"], b["run_id"], int(b["failed"]), int(total),
            [(int(r["idx"]), r["key"], r["error"]) for r in rows],
            also=" (or `flowstone scatter retry-failed`)")
        return f"ScatterThresholdError: {message}"


async def _stream_results(conn: Any, db: Database, barrier_id: int) -> list[Any]:
    """Item results in item order, read through a server-side cursor (pages of 2,000)."""
    out: list[Any] = []
    async with conn.transaction():
        async for r in conn.cursor(
            f"SELECT state, result FROM {db.t.items} WHERE barrier_id = $1 ORDER BY idx",
            barrier_id, prefetch=2000,
        ):
            data = r["result"]
            out.append(decode_value(data.encode()) if r["state"] == "succeeded" and data
                       is not None else None)
    return out


def _params(fn: Any) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)
