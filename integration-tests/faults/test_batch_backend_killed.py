"""The server process running a batch of finishes is terminated in the middle of it.

A batch of finishes of one shape (a pack's) is one pipelined round trip: every call bound
and executed, then one Sync, so one implicit transaction (migration 0011). Here the batch's
first call waits on a lock this test holds (the batch's join), so the backend is
terminated while the batch is surely inside the server: nothing of it may be left behind
(no step finished, no join released, no record, no run row touched), and the same batch
sent again is recorded once, its join released once.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from flowstone.errors import StorageError
from flowstone.protocols import Finish
from flowstone.records import MaterializationRecord, RunRecord, StepOutcome, StepSpec
from flowstone_io_postgres import PostgresRunStore

pytestmark = pytest.mark.integration


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _finish(run: RunRecord, asset: str) -> Finish:
    mat = MaterializationRecord(
        f"mat-{uuid.uuid4().hex}", run.pipeline, run.run_id, asset, "", "succeeded"
    )
    return Finish(run.run_id, asset, "", StepOutcome("succeeded", mat))


async def _terminate_the_blocked_batch(url: str, run_id: str, started: threading.Event,
                                       outcome: list[Any]) -> int:  # fmt: skip
    """Hold the join's row, wait until the batch blocks on it, terminate that backend."""
    holder = await asyncpg.connect(_dsn(url))
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM flowstone.steps WHERE run_id = $1 AND asset = 'join' FOR UPDATE",
                run_id,
            )
            started.set()
            for _ in range(500):
                blocked = await holder.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    holder.get_server_pid(),
                )
                if blocked:
                    await holder.execute("SELECT pg_terminate_backend($1)", blocked[0]["pid"])
                    return int(blocked[0]["pid"])
                if outcome:
                    raise AssertionError(f"the batch ended without waiting: {outcome}")
                await asyncio.sleep(0.01)
            raise AssertionError("the batch never waited on the join's lock")
    finally:
        await holder.close()


def test_backend_terminated_inside_a_pipelined_batch_leaves_nothing_behind(
    database_url: str,
) -> None:
    store = PostgresRunStore(database_url)
    try:
        now = datetime.now(UTC)
        run = RunRecord(f"run-{uuid.uuid4().hex[:8]}", "sales", ("join",), "", "running",
                        now, now)  # fmt: skip
        store.create_run(run, [StepSpec("x", ""), StepSpec("y", ""),
                               StepSpec("join", "", deps=(("x", ""), ("y", "")))])  # fmt: skip
        for asset in ("x", "y"):
            assert store.claim_step(run.run_id, asset, "", owner="w", lease_seconds=60)
        batch = [_finish(run, "x"), _finish(run, "y")]
        started, outcome = threading.Event(), list[Any]()

        def send() -> None:
            started.wait(10)
            try:
                outcome.append(store.finish_steps(batch, sources={}))
            except Exception as exc:
                outcome.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        killed = asyncio.run(_terminate_the_blocked_batch(database_url, run.run_id, started,
                                                          outcome))  # fmt: skip
        sender.join(30)
        assert killed and len(outcome) == 1
        assert isinstance(outcome[0], StorageError), outcome  # said, not swallowed
        steps = {s.asset: s for s in store.list_steps(run.run_id)}
        assert {a: s.state for a, s in steps.items()} == {
            "x": "running", "y": "running", "join": "pending"}
        assert steps["join"].remaining_deps == 2
        assert all(store.get_materialization(f.outcome.materialization.id) is None
                   for f in batch if f.outcome.materialization)  # fmt: skip
        recorded = store.get_run(run.run_id)
        assert recorded is not None and recorded.status == "running"

        # the same batch again, on a fresh connection: recorded once, the join released once
        again = store.finish_steps(batch, sources={})
        transitions = [g[0] for g in again if not isinstance(g, Exception)]
        assert [t.applied for t in transitions] == [True, True]
        assert [s.asset for t in transitions for s in t.ready] == ["join"]
        duplicate = store.finish_steps(batch, sources={})
        assert [g[0].applied for g in duplicate if not isinstance(g, Exception)] == [
            False, False]
        join = store.get_step(run.run_id, "join", "")
        assert join is not None and join.state == "ready" and join.remaining_deps == 0
    finally:
        store.close()
