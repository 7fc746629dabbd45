"""The scatter Celery tasks and the sweeper hook, added to FlowStone's worker app.

Registered through the ``flowstone.celery_tasks`` entry point: ``flowstone_celery.make_app``
calls :func:`register` for every installed plugin. Tasks acknowledge late and are
idempotent; infrastructure errors are retried with backoff, and whatever is still lost
(a SIGKILLed worker, a dropped message) is re-sent by :func:`sweep`: a lost message
within the recover interval, a dead runner's work after a lease.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flowstone_scatter import barrier
from flowstone_scatter.db import Database
from flowstone_scatter.messages import (
    CHUNK_TASK,
    READ_TASK,
    ChunkMessage,
    ScatterMessageError,
    parse_chunk,
    parse_read,
)

if TYPE_CHECKING:
    from celery import Task

    from flowstone.engine import StepRunner
    from flowstone.pipeline import Pipeline

__all__ = ["register", "sweep"]

log = logging.getLogger("flowstone.scatter")
MAX_BACKOFF_SECONDS = 60.0
DEFAULT_RECOVER_AFTER = 60.0
"""Seconds a queued scatter message may go unclaimed before it counts as lost (the Celery
settings' ``recover_after``, ``FLOWSTONE_RECOVER_AFTER``, on workers)."""
SWEEP_LIMIT = 10_000
"""The most items one sweep re-sends (the rest wait for the next sweep)."""
RESEND_BACKOFF_DOUBLINGS = 6
"""A lost item's n-th re-send waits ``recover_after * 2**min(n, 6)`` after the previous
one (the run store's rule for steps): a window that waits in a backlogged queue is not
re-sent every interval."""
PRUNE_LIMIT = 100
"""The most finished barriers (with their items) one sweep deletes."""


def _resolve(app: Any, body: object,
             parse: Callable[[object], ChunkMessage]) -> tuple[StepRunner, ChunkMessage] | None:
    try:
        msg = parse(body)
    except ScatterMessageError as exc:
        log.error("dropping malformed scatter message: %s", exc)
        return None
    pipeline = app.pipelines.get(msg.pipeline)
    if pipeline is None:
        log.error("dropping scatter message for unknown pipeline %r (this worker serves %s)",
                  msg.pipeline, sorted(app.pipelines) or "none")
        return None
    return pipeline.runner, msg


def register(app: Any) -> None:
    """Add ``flowstone.scatter_chunk``, ``flowstone.scatter_read`` and the sweep hook
    (with the app's ``recover_after``: how long a queued message may go unclaimed)."""
    from flowstone_scatter.items import run_chunk, run_reader

    def retrying(task: Task, body: object, exc: Exception) -> int:
        limit = app.flowstone_settings.infra_retries
        if task.request.retries >= limit:
            log.error("giving up on scatter message %r after %d retries (%s); the sweeper "
                      "re-sends it", body, limit, exc)
            return 0
        delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** task.request.retries)
        log.warning("scatter message %r failed (%s: %s); retrying in %.1fs", body,
                    type(exc).__name__, exc, delay)
        raise task.retry(exc=exc, countdown=delay) from exc

    def add(name: str, parse: Callable[[object], ChunkMessage],
            run: Callable[[StepRunner, ChunkMessage, str | None], int]) -> None:
        def task(self: Task, body: object) -> int:
            found = _resolve(app, body, parse)
            if found is None:
                return 0
            try:  # the task id names the claim: a retry of this message keeps it
                return run(*found, self.request.id)
            except Exception as exc:
                return retrying(self, body, exc)

        app.task(name=name, bind=True, shared=False, acks_late=True,
                 reject_on_worker_lost=True, ignore_result=True, max_retries=None)(task)

    add(CHUNK_TASK, parse_chunk, run_chunk)
    add(READ_TASK, parse_read, lambda runner, msg, _owner: run_reader(runner, msg))

    def hook(pipeline: Pipeline, now: datetime) -> int:
        settings = getattr(app, "flowstone_settings", None)
        after = float(getattr(settings, "recover_after", DEFAULT_RECOVER_AFTER))
        return sweep(pipeline, now, recover_after=after)

    hooks = getattr(app, "sweep_hooks", None)
    if isinstance(hooks, list):
        hooks.append(hook)


def sweep(pipeline: Pipeline, now: datetime, *,
          recover_after: float = DEFAULT_RECOVER_AFTER) -> int:
    """Recover this pipeline's scatters; return how many things were re-sent or finished.

    * a ``finishing`` barrier whose finishing claim expired or was released (its worker
      died, or its finish failed): finished again;
    * (items are looked for from the barrier's ``sweep_from``, below which every unit is
      finished, up to its ``next_unit``; each sweep moves ``sweep_from`` up to the first
      unfinished unit, so it reads about a window of items, whatever the barrier's size)
    * items ``queued`` but never claimed by a runner for ``recover_after`` seconds: their
      message was lost (a broker flush or restart); their chunks are sent again, and
      stamped, each re-send waiting twice as long as the one before (a claim resets it);
    * items whose runner's claim is older than a lease: the runner died; their chunks are
      sent again and the next runner takes the claim over;
    * a running barrier idle for a lease: the window is topped up (e.g. ``start`` never
      ran) or the barrier finished;
    * a reader never claimed for ``recover_after`` seconds (lost message) or whose holder
      stopped beating for a lease (dead runner): the reader task is sent again and resumes
      from its checkpoint;
    * barriers finished longer ago than the pipeline's retention (``route_retention``,
      what the sweeper keeps route decisions for) are deleted with their items.

    Every age is measured by the database's ``now()``; ``now`` (the sweeper's clock) is
    not compared with stored times.
    """
    from flowstone_scatter.items import coordinator_of

    runner = pipeline.runner
    runtime = runner.runtime
    if not any(a.scatter for a in runtime.graph.assets.values()):
        return 0
    coord = coordinator_of(runner)
    db = coord.database(runner)
    lease = float(runtime.policies.lease_seconds)
    retention = float(runtime.policies.route_retention)
    name = runtime.name

    async def scan(conn: Any) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        finishing = await conn.fetch(
            f"SELECT id FROM {db.t.barriers} WHERE pipeline = $1 AND state = 'finishing' AND "
            "(finisher IS NULL OR finish_expires IS NULL OR finish_expires < now())", name)
        stale = await conn.fetch(
            f"UPDATE {db.t.items} AS i SET queued_at = now(), claimed_at = NULL, "
            "claimed_by = NULL, resends = CASE WHEN v.died THEN 0 ELSE i.resends + 1 END "
            "FROM (SELECT s.barrier_id, s.idx, s.claimed_by IS NOT NULL AS "
            f"died, b.chunk_units FROM {db.t.items} AS s JOIN {db.t.barriers} AS b ON "
            "s.barrier_id = b.id WHERE b.pipeline = $1 AND b.state = 'running' AND "
            "s.unit >= b.sweep_from AND s.unit < b.next_unit AND "
            "s.state = 'queued' AND ((s.claimed_by IS NULL AND s.queued_at < now() - "
            "make_interval(secs => $2 * power(2, least(s.resends, $5)))) OR "
            "s.claimed_at < now() - make_interval(secs => $3)) "
            "ORDER BY s.resends, s.barrier_id, s.idx LIMIT $4 FOR UPDATE OF s SKIP LOCKED) AS v "
            "WHERE i.barrier_id = v.barrier_id AND i.idx = v.idx "
            "RETURNING i.barrier_id, i.unit, v.died, v.chunk_units",
            name, recover_after, lease, SWEEP_LIMIT, RESEND_BACKOFF_DOUBLINGS)
        await conn.execute(
            f"UPDATE {db.t.barriers} AS b SET sweep_from = coalesce((SELECT min(i.unit) FROM "
            f"{db.t.items} AS i WHERE i.barrier_id = b.id AND i.unit >= b.sweep_from AND "
            "i.unit < b.next_unit AND i.state IN ('pending', 'queued')), b.next_unit) "
            "WHERE b.pipeline = $1 AND b.state = 'running'", name)
        idle = await conn.fetch(
            f"SELECT id, asset FROM {db.t.barriers} WHERE pipeline = $1 AND state = 'running' AND "
            "updated_at < now() - make_interval(secs => $2)", name, lease)
        readers = await conn.fetch(
            f"UPDATE {db.t.barriers} SET read_sent_at = now() WHERE pipeline = $1 AND "
            "state = 'running' AND NOT reader_done AND ((reader_owner IS NULL AND "
            "coalesce(read_sent_at, created_at) < now() - make_interval(secs => $2)) OR "
            "(reader_owner IS NOT NULL AND reader_beat < now() - make_interval(secs => $3) AND "
            "coalesce(read_sent_at, created_at) < now() - make_interval(secs => $3))) "
            "RETURNING id", name, recover_after, lease)
        return finishing, stale, idle, readers

    finishing, stale, idle, readers = db.run(scan)
    count = 0
    for r in finishing:
        coord.finalize(runner, int(r["id"]))
        count += 1
    by_barrier: dict[int, list[int]] = defaultdict(list)
    sizes: dict[int, int] = {}
    lost = died = 0
    for r in stale:
        by_barrier[int(r["barrier_id"])].append(int(r["unit"]))
        sizes[int(r["barrier_id"])] = int(r["chunk_units"])
        if r["died"]:
            died += 1
        else:
            lost += 1
    for bid, units in by_barrier.items():
        ranges = barrier.unit_ranges(units, sizes[bid])
        coord.send(runner, CHUNK_TASK,
                   [ChunkMessage(name, bid, s, e).to_json() for s, e in ranges])
        count += len(ranges)
    if stale:
        log.warning("scatter sweep of %s: re-sent %d lost items (queued, never claimed for "
                    "%gs) and %d items of dead runners (claim older than the %gs lease)",
                    name, lost, recover_after, died, lease)
    for r in idle:
        sc = runtime.graph[r["asset"]].scatter
        if sc is not None:
            coord.kick(runner, int(r["id"]), sc)
    for r in readers:
        coord.send(runner, READ_TASK, [ChunkMessage(name, int(r["id"])).read_json()])
        count += 1
    pruned = prune(db, name, retention)
    if count or pruned:
        log.info("scatter sweep of %s: %d chunks/readers re-sent or finished, %d finished "
                 "barriers pruned", name, count, pruned)
    return count


def prune(db: Database, pipeline: str, retention: float, limit: int = PRUNE_LIMIT) -> int:
    """Delete up to ``limit`` barriers of ``pipeline`` (with their items, results included)
    that finished (``succeeded``, ``failed``, ``cancelled``) more than ``retention`` seconds
    ago by the database's clock; return how many barriers were deleted."""

    async def go(conn: Any) -> int:
        async with conn.transaction():
            ids = await conn.fetch(
                f"SELECT id FROM {db.t.barriers} WHERE pipeline = $1 AND state IN "
                "('succeeded', 'failed', 'cancelled') AND updated_at < now() - "
                "make_interval(secs => $2) ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED",
                pipeline, retention, limit)
            gone = [int(r["id"]) for r in ids]
            if not gone:
                return 0
            await conn.execute(f"DELETE FROM {db.t.items} WHERE barrier_id = ANY($1::bigint[])",
                               gone)
            await conn.execute(
                f"DELETE FROM {db.t.barriers} WHERE id = ANY($1::bigint[])", gone)
            return len(gone)

    return db.run(go)
