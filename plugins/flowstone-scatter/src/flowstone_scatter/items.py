"""Running one chunk of items (or batches) on a worker, and streaming a reader.

A chunk is a range of units (one item, or one batch each). Every unit keeps its own retry
count (``item_retry``), timeout (``item_timeout``) and result; the whole chunk is recorded
with one statement, and only the items still ``queued`` count, so a chunk delivered twice
(or run again after a worker died) is recorded once.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from typing import TYPE_CHECKING, Any

from flowstone.codec import decode_value, encode_value
from flowstone.defaults.scatter_units import ItemOutcome, item_error, run_unit
from flowstone.engine import StepRunner, describe_error
from flowstone.errors import UsageError
from flowstone.partitions import decode_partition
from flowstone.scatter import Batch, Scatter
from flowstone_scatter import barrier, finish
from flowstone_scatter.coordinator import CHUNK_SECONDS, CeleryScatterCoordinator, build_rows
from flowstone_scatter.db import Database
from flowstone_scatter.messages import ChunkMessage

if TYPE_CHECKING:
    from flowstone.asset import AssetDef
    from flowstone.context import Context
    from flowstone.protocols import ItemReader

__all__ = ["run_chunk", "run_reader"]

log = logging.getLogger("flowstone.scatter")
Result = tuple[int, str, str | None, str | None]


def coordinator_of(runner: StepRunner) -> CeleryScatterCoordinator:
    coord = runner.runtime.scatter_coordinator
    if not isinstance(coord, CeleryScatterCoordinator):
        raise UsageError(
            f"pipeline {runner.runtime.name!r} on this worker does not use the Celery scatter "
            "coordinator; start workers with FLOWSTONE_EXECUTOR=celery")
    return coord


def run_chunk(runner: StepRunner, msg: ChunkMessage, owner: str | None = None) -> int:
    """Run the still-queued items of one chunk message that no live runner holds; return
    how many were recorded.

    ``owner`` names this delivery's claim on the items (the Celery task id, which a retry
    of the same message keeps, so the retry may run them again); a fresh one by default.
    """
    coord = coordinator_of(runner)
    db = coord.database(runner)
    runtime = runner.runtime
    lease = float(runtime.policies.lease_seconds)
    me = owner or uuid.uuid4().hex
    b, rows = db.run(lambda c: barrier.load_chunk(c, db.t, msg.barrier, msg.start, msg.end,
                                                  runtime.name, me, lease))
    if b is None:
        _rejected(runner, msg)
    if not rows:
        return 0
    run = runtime.store.get_run(b["run_id"])
    if run is None or run.status == "cancelled":
        db.run(lambda c: c.execute(f"UPDATE {db.t.barriers} SET state = 'cancelled', "
                                   "updated_at = now() WHERE id = $1 AND state = 'running'",
                                   msg.barrier))
        return 0
    a = runtime.graph[b["asset"]]
    sc = a.scatter
    assert sc is not None
    deps, shared = coord.inputs(runner, a, b["run_id"], b["partition"])
    units = [list(g) for _, g in groupby(rows, key=lambda r: r.unit)]
    delay = _rate_slots(db, b, sc, len(units))
    # the slots are measured on this process's monotonic clock from the database's answer
    # (seconds until the first slot): no wall clock of this process is involved
    first = time.monotonic() + delay if delay is not None else None
    results: list[Result] = []
    count = int(b["units_total"]) if b["reader_done"] and sc.batching is not None else None
    # the claim on the chunk's items is renewed while it runs (even inside one long item),
    # so the sweeper never takes a live runner's items for a dead one's
    claimed = [r.idx for r in rows]
    key = decode_partition(b["partition"])
    ran, started = 0, time.monotonic()
    with finish.Heartbeat(lambda: _touch(db, msg.barrier, claimed, me), lease,
                          f"the claim on {len(rows)} items of scatter barrier "
                          f"{msg.barrier}") as beat:
        for i, unit in enumerate(units):
            if beat.lost.is_set():
                break  # taken over by another runner: record what ran, leave the rest
            if first is not None and (wait := first + i / (sc.rate_per_second or 1.0)
                                      - time.monotonic()) > 0:
                time.sleep(wait)
            results.extend(_run_unit(runner, a, sc, b, (key, beat.lost), deps, shared, unit,
                                     count))
            ran += 1
    resize = paced_chunk_units(coord.chunk_bounds(sc), ran, time.monotonic() - started)
    claim = db.run(lambda c: barrier.record(c, db.t, msg.barrier, sc, results, lease, resize))
    ok = sum(1 for r in results if r[1] == "succeeded")
    runtime.events.emit("scatter.progress", b["run_id"], a.name, b["partition"],
                        {"succeeded": ok, "failed": len(results) - ok, "chunk": True})
    coord.after(runner, msg.barrier, claim)
    return len(results)


def _rejected(runner: StepRunner, msg: ChunkMessage) -> None:
    """Log a chunk message naming a barrier this pipeline does not have (another
    pipeline's barrier, or one pruned since): nothing ran."""
    log.warning("rejected a scatter chunk message for barrier %d: pipeline %r has no such "
                "barrier (it belongs to another pipeline or was pruned); nothing ran",
                msg.barrier, runner.runtime.name)


def _rate_slots(db: Database, b: Any, sc: Scatter, n: int) -> float | None:
    """Reserve ``n`` start slots in the barrier's shared token bucket (one statement per
    chunk, shared by every worker); return how many seconds from now the first slot is.

    The bucket is kept and compared in database time only (``clock_timestamp()``); the
    answer is a duration, so a worker whose clock is off still keeps the rate."""
    rate = sc.rate_per_second
    if rate is None:
        return None
    span = n / rate

    async def reserve(conn: Any) -> float:
        row = await conn.fetchrow(
            f"UPDATE {db.t.barriers} SET rate_next = greatest(coalesce(rate_next, "
            "clock_timestamp()), clock_timestamp()) + make_interval(secs => $2) "
            "WHERE id = $1 RETURNING extract(epoch FROM rate_next - clock_timestamp()) AS ahead",
            b["id"], span)
        return max(0.0, float(row["ahead"]) - span)

    return db.run(reserve)


def paced_chunk_units(bounds: tuple[int, int] | None, units: int, seconds: float) -> int | None:
    """The chunk size (units per message) that would have taken :data:`~flowstone_scatter.
    coordinator.CHUNK_SECONDS` at this chunk's pace, within ``bounds``; None to keep the
    barrier's size (a fixed size, or nothing ran)."""
    if bounds is None or units == 0:
        return None
    low, high = bounds
    per_unit = max(seconds / units, 1e-6)
    return max(low, min(high, round(CHUNK_SECONDS / per_unit)))


def _run_unit(runner: StepRunner, a: AssetDef, sc: Scatter, b: Any,
              under: tuple[Any, threading.Event], deps: dict[str, Any], shared: Any,
              unit: Sequence[barrier.ItemRow], count: int | None) -> list[Result]:
    """Run one unit; ``under``: the decoded partition and the chunk's claim-lost event
    (``context.lease_lost`` of every item in the chunk)."""
    items = [decode_value(r.item.encode()) for r in unit]
    key, lost = under

    def context_for(attempt: int) -> Context:
        context = runner.context_for(a, b["run_id"], b["partition"], attempt, key=key,
                                     lease_lost=lost)
        if sc.batching is None:
            context.scatter_item = items[0]
        else:
            context.batch = Batch(items=items, index=unit[0].unit, count=count,
                                  input=shared, keys=[r.key for r in unit])
        return context

    outcomes = run_unit(a, deps, len(unit), context_for)
    return [_encode(a, r.idx, o) for r, o in zip(unit, outcomes, strict=True)]


def _encode(a: AssetDef, idx: int, outcome: ItemOutcome) -> Result:
    if outcome.error is not None:
        return (idx, "failed", None, outcome.error)
    try:
        return (idx, "succeeded", encode_value(outcome.value, asset=a.name).decode(), None)
    except Exception as exc:  # an unencodable result fails that item, clearly
        return (idx, "failed", None, item_error(exc))


def run_reader(runner: StepRunner, msg: ChunkMessage,
               on_page: Callable[[int], None] | None = None) -> int:
    """Stream the barrier's reader, one transaction (rows + checkpoint) per page.

    Returns the number of pages appended (0 if another reader holds this barrier)."""
    coord = coordinator_of(runner)
    db = coord.database(runner)
    owner = uuid.uuid4().hex
    b = db.run(lambda c: barrier.claim_reader(c, db.t, msg.barrier, owner,
                                              runner.runtime.policies.lease_seconds,
                                              runner.runtime.name))
    if b is None:
        return 0
    # the reader lease is renewed while a page is read (a slow source is not a dead reader)
    with finish.Heartbeat(lambda: _beat(db, msg.barrier, owner),
                          float(runner.runtime.policies.lease_seconds),
                          f"the reader lease of scatter barrier {msg.barrier}"):
        return _read(runner, coord, db, msg, b, owner, on_page)


def _read(runner: StepRunner, coord: CeleryScatterCoordinator, db: Database, msg: ChunkMessage,
          b: Any, owner: str, on_page: Callable[[int], None] | None) -> int:
    """The reader loop of :func:`run_reader`, under its lease."""
    a = runner.runtime.graph[b["asset"]]
    sc = a.scatter
    assert sc is not None and sc.reader is not None
    deps, _ = coord.inputs(runner, a, b["run_id"], b["partition"])
    reader = copy.copy(sc.reader)
    pages = 0
    try:
        try:
            reader.init(dict(deps))
            state = json.loads(b["checkpoint"]) if b["checkpoint"] else None
            next_index, units = 0, 0
            if state is not None:
                reader.restore(state["reader"])
                next_index, units = int(state["next_index"]), int(state["units"])
            expected = reader.count()
        except Exception as exc:
            _fail_reader(coord, runner, b, f"reader of scatter asset {a.name!r} failed to "
                         f"start: {describe_error(exc)}")
            return pages
        # the next page is read (and encoded) in a thread while this one is written: the
        # checkpoint written with a page is taken right after that page was read, so a
        # reader that dies re-reads from the last page written, prefetched or not
        with ThreadPoolExecutor(1, thread_name_prefix="flowstone-scatter-reader") as pool:
            pending = _pages(reader, sc, a.name, next_index, units)
            ahead = pool.submit(next, pending)
            while True:
                try:
                    rows, units, checkpoint, next_index, done = ahead.result()
                except _ReadFailed as exc:
                    _fail_reader(coord, runner, b, f"reader of scatter asset {a.name!r} "
                                 f"failed at item {exc.index}: {describe_error(exc.cause)}")
                    return pages
                if not done:
                    ahead = pool.submit(next, pending)
                claim = db.run(_page(db, msg.barrier, owner, sc, rows, units, checkpoint,
                                     next_index, done, expected,
                                     float(runner.runtime.policies.lease_seconds)))
                if claim is None:
                    log.warning("scatter reader of barrier %s lost its lease; stopping",
                                msg.barrier)
                    return pages
                pages += 1
                if on_page is not None:
                    on_page(pages)
                coord.after(runner, msg.barrier, claim)
                if done:
                    return pages
    finally:
        reader.close()


class _ReadFailed(Exception):
    """Reading or encoding the page from item ``index`` on raised ``cause``."""

    def __init__(self, index: int, cause: Exception) -> None:
        super().__init__(index, cause)
        self.index = index
        self.cause = cause


Page = tuple[list[tuple[int, int, str, str]], int, str, int, bool]
"""A page to write: its rows, the units after it, its checkpoint, the next item index,
and whether it is the (empty) last one."""


def _pages(reader: ItemReader, sc: Scatter, asset: str, next_index: int,
           units: int) -> Iterator[Page]:
    """The reader's pages, from ``next_index``, each with the checkpoint taken right after
    it was read; the last one is empty."""
    seen: set[str] = set()  # duplicates across pages are dropped by the unique key index
    while True:
        try:
            page = reader.read(sc.page_size)
            rows, units = build_rows(sc, asset, page, next_index, units, seen)
            checkpoint = json.dumps({"reader": reader.checkpoint(),
                                     "next_index": next_index + len(page), "units": units})
        except Exception as exc:
            raise _ReadFailed(next_index, exc) from exc
        seen.clear()
        next_index += len(page)
        yield rows, units, checkpoint, next_index, not page
        if not page:
            return


def _touch(db: Database, barrier_id: int, idx: list[int], owner: str) -> bool:
    """Renew ``owner``'s claim on its items still queued (database time); False if it
    holds none of them any more."""
    async def go(conn: Any) -> Any:
        return await conn.fetchval(
            f"WITH t AS (UPDATE {db.t.items} SET claimed_at = now() WHERE barrier_id = $1 "
            "AND idx = ANY($2::bigint[]) AND state = 'queued' AND claimed_by = $3 "
            "RETURNING 1) SELECT count(*) FROM t", barrier_id, idx, owner)

    return bool(db.run(go))


def _beat(db: Database, barrier_id: int, owner: str) -> bool:
    """Renew ``owner``'s reader lease (database time); False if it no longer holds it."""
    async def go(conn: Any) -> Any:
        return await conn.fetchval(
            f"UPDATE {db.t.barriers} SET reader_beat = now() WHERE id = $1 AND "
            "reader_owner = $2 AND NOT reader_done AND state = 'running' RETURNING id",
            barrier_id, owner)

    return db.run(go) is not None


def _page(db: Database, barrier_id: int, owner: str, sc: Scatter,
          rows: list[tuple[int, int, str, str]], units: int, checkpoint: str, next_index: int,
          done: bool, expected: int | None,
          lease: float) -> Callable[[Any], Awaitable[barrier.Claim | None]]:
    async def go(conn: Any) -> barrier.Claim | None:
        return await barrier.append_page(conn, db.t, barrier_id, owner, sc, rows, units,
                                         checkpoint, next_index, done, expected, lease)

    return go


def _fail_reader(coord: CeleryScatterCoordinator, runner: StepRunner, b: Any,
                 error: str) -> None:
    db = coord.database(runner)

    async def fail(conn: Any) -> Any:
        return await conn.fetchval(
            f"UPDATE {db.t.barriers} SET state = 'finishing', outcome = 'failed', error = $2, "
            "updated_at = now() WHERE id = $1 AND state = 'running' RETURNING id",
            b["id"], error)

    if db.run(fail) is not None:
        coord.finalize(runner, int(b["id"]))
