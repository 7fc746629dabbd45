"""The scatter Celery tasks and the sweeper hook, added to FlowStone's worker app.

Registered through the ``flowstone.celery_tasks`` entry point: ``flowstone_celery.make_app``
calls :func:`register` for every installed plugin. Tasks acknowledge late and are
idempotent; infrastructure errors are retried with backoff, and whatever is still lost
(a SIGKILLed worker, a dropped message) is re-sent by :func:`sweep`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flowstone_scatter import barrier
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
    """Add ``flowstone.scatter_chunk``, ``flowstone.scatter_read`` and the sweep hook."""
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
            run: Callable[[StepRunner, ChunkMessage], int]) -> None:
        def task(self: Task, body: object) -> int:
            found = _resolve(app, body, parse)
            if found is None:
                return 0
            try:
                return run(*found)
            except Exception as exc:
                return retrying(self, body, exc)

        app.task(name=name, bind=True, shared=False, acks_late=True,
                 reject_on_worker_lost=True, ignore_result=True, max_retries=None)(task)

    add(CHUNK_TASK, parse_chunk, run_chunk)
    add(READ_TASK, parse_read, lambda runner, msg: run_reader(runner, msg))

    hooks = getattr(app, "sweep_hooks", None)
    if isinstance(hooks, list):
        hooks.append(sweep)


def sweep(pipeline: Pipeline, now: datetime) -> int:
    """Recover this pipeline's scatters; return how many things were re-sent or finished.

    * a barrier that won ``finishing`` but whose gather never completed (its worker died);
    * items ``queued`` for longer than the lease (their chunk's worker died, or the
      message was lost): their chunks are sent again;
    * a running barrier idle for a lease: the window is topped up (e.g. ``start`` never
      ran) or the barrier finished;
    * a reader whose holder stopped beating: the reader task is sent again and resumes
      from its checkpoint.
    """
    from flowstone_scatter.items import coordinator_of

    runner = pipeline.runner
    runtime = runner.runtime
    if not any(a.scatter for a in runtime.graph.assets.values()):
        return 0
    coord = coordinator_of(runner)
    db = coord.database(runner)
    lease = float(runtime.policies.lease_seconds)
    name = runtime.name

    async def scan(conn: Any) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        finishing = await conn.fetch(
            f"SELECT id FROM {db.t.barriers} WHERE pipeline = $1 AND state = 'finishing' AND "
            "updated_at < now() - make_interval(secs => $2)", name, lease)
        stale = await conn.fetch(
            f"UPDATE {db.t.items} AS i SET queued_at = now() FROM {db.t.barriers} AS b "
            "WHERE i.barrier_id = b.id AND b.pipeline = $1 AND b.state = 'running' AND "
            "i.state = 'queued' AND i.queued_at < now() - make_interval(secs => $2) "
            "RETURNING i.barrier_id, i.unit, b.chunk_units", name, lease)
        idle = await conn.fetch(
            f"SELECT id, asset FROM {db.t.barriers} WHERE pipeline = $1 AND state = 'running' AND "
            "updated_at < now() - make_interval(secs => $2)", name, lease)
        readers = await conn.fetch(
            f"SELECT id FROM {db.t.barriers} WHERE pipeline = $1 AND state = 'running' AND NOT "
            "reader_done AND coalesce(reader_beat, created_at) < now() - "
            "make_interval(secs => $2)", name, lease)
        return finishing, stale, idle, readers

    finishing, stale, idle, readers = db.run(scan)
    count = 0
    for r in finishing:
        coord.finalize(runner, int(r["id"]))
        count += 1
    by_barrier: dict[int, list[int]] = defaultdict(list)
    sizes: dict[int, int] = {}
    for r in stale:
        by_barrier[int(r["barrier_id"])].append(int(r["unit"]))
        sizes[int(r["barrier_id"])] = int(r["chunk_units"])
    for bid, units in by_barrier.items():
        ranges = barrier.unit_ranges(units, sizes[bid])
        coord.send(runner, CHUNK_TASK,
                   [ChunkMessage(name, bid, s, e).to_json() for s, e in ranges])
        count += len(ranges)
    for r in idle:
        sc = runtime.graph[r["asset"]].scatter
        if sc is not None:
            coord.kick(runner, int(r["id"]), sc)
    for r in readers:
        coord.send(runner, READ_TASK, [ChunkMessage(name, int(r["id"])).read_json()])
        count += 1
    if count:
        log.info("scatter sweep of %s: %d chunks/readers re-sent or finished", name,
                 count)
    return count
