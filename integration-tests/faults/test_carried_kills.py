"""A join's finish carried past its message (``flowstone_celery.carried``), then the worker
SIGKILLed or warm-stopped.

With one slot, a run's three branches travel as one pack; the pack's finish transaction
claims the join, which runs in the same pool process, and its finish waits for the next
pack (here: up to ``FLOWSTONE_FINISH_BATCH_SECONDS=60``, and no next pack comes). The join
has run, its step is still ``running`` under its claim, and the message is acknowledged.

* SIGKILLed with its pool: nothing records the join. Its lease expires, the sweeper runs it
  again (attempt 2) on the restarted worker, and it is recorded once, from attempt 2.
* Warm-stopped (SIGTERM): the pool process records the carried finish before it exits.
  The join is recorded once, from attempt 1, without running again.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_it import SETTLE, Workers, client, sql, wait_for

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
JOINS_SPEC = f"{HERE / 'pipelines' / 'fault_joins.py'}:pipeline"
CARRYING = {"FLOWSTONE_WORKER_SLOTS": "1", "FLOWSTONE_FINISH_BATCH_SECONDS": "60"}


@pytest.fixture
def joins(queue: str, workers: Workers, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from fault_joins import make_pipeline

    # the client packs a run's three branches into one message (one slot assumed)
    monkeypatch.setenv("FLOWSTONE_WORKER_SLOTS", "1")
    workers.specs = [JOINS_SPEC]
    with client(make_pipeline()) as pipeline:
        yield pipeline


def _carried(joins: Any, workers: Workers, database_url: str) -> tuple[Any, Any, str]:
    """Start a worker and one run, and wait until its join has run with its finish
    carried: the branches recorded, the join's execution audited, its step still
    running. Returns the worker, the run and its partition."""
    from fault_joins import BRANCHES

    (worker,) = workers.start_many("w1", concurrency=1, **CARRYING)
    key = f"carried_{uuid.uuid4().hex[:6]}"
    run = joins.run("parent", key, wait=False, force=True)

    def carried() -> bool:
        steps = {s.asset: s.state for s in joins.store.list_steps(run.run_id)}
        ran = sql(database_url, "SELECT 1 FROM public.fault_audit WHERE run_id = $1 "
                  "AND asset = 'parent'", run.run_id)  # fmt: skip
        return bool(ran) and steps == {**dict.fromkeys(BRANCHES, "succeeded"),
                                       "parent": "running"}  # fmt: skip

    wait_for(carried, 120, "the join to run with its finish carried")
    time.sleep(1.0)  # long past a message's end: still carried, not recorded
    assert {s.asset: s.state for s in joins.store.list_steps(run.run_id)}["parent"] == "running"
    assert joins.store.get_run(run.run_id).status == "running"
    return worker, run, key


def _recorded_once(joins: Any, database_url: str, run: Any, key: str, attempt: int) -> None:
    from fault_joins import BRANCHES

    mats = sql(database_url, "SELECT asset, attempt FROM flowstone.materializations "
               "WHERE run_id = $1", run.run_id)  # fmt: skip
    assert Counter(m["asset"] for m in mats) == Counter({a: 1 for a in (*BRANCHES, "parent")})
    audit = sql(database_url, "SELECT eid, asset, attempt FROM public.fault_audit "
                "WHERE run_id = $1", run.run_id)  # fmt: skip
    assert Counter(a["asset"] for a in audit) == Counter(
        {**dict.fromkeys(BRANCHES, 1), "parent": attempt}
    )
    value = joins.get("parent", key)
    row = {a["eid"]: a for a in audit}[value["eid"]]  # the value one execution wrote
    assert row["asset"] == "parent" and row["attempt"] == value["attempt"] == attempt
    assert value["v"] == 6


def test_worker_sigkilled_while_a_joins_finish_is_carried(
    joins: Any, workers: Workers, database_url: str
) -> None:
    w1, run, key = _carried(joins, workers, database_url)
    killed = workers.kill_group(w1.pid)
    workers.start_many(workers.name_of(killed), concurrency=1)  # its supervisor restarts it
    (done,) = joins.wait([run], timeout=SETTLE * 3)
    assert done.status == "succeeded", workers.logs()
    _recorded_once(joins, database_url, run, key, attempt=2)


def test_warm_stopped_worker_records_the_finish_it_carries(
    joins: Any, workers: Workers, database_url: str
) -> None:
    w1, run, key = _carried(joins, workers, database_url)
    w1.send_signal(signal.SIGTERM)  # warm shutdown: the pool process exits, recording first
    w1.wait(timeout=60)
    assert joins.store.get_run(run.run_id).status == "succeeded", workers.logs()
    _recorded_once(joins, database_url, run, key, attempt=1)
