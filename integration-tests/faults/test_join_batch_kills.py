"""A worker SIGKILLed with its whole process group while the joins of many runs wait in
one finish batch.

``run_many`` puts the branches of many runs in one message (``FLOWSTONE_BATCH_STEPS``);
the worker records their finishes together, each run's last branch claiming its join,
and then runs those joins one after the other, their finishes waiting together in the
next batch. Killed inside the fourth join, the three before it have run but are not
recorded (still ``running`` under their claims): they are taken over once their leases
expire and run again on attempt 2, the killed one too; the joins after it, claimed but
not started, run once, on attempt 2. Every branch and join of every run is recorded
once, holding the value of the attempt it names."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_it import SETTLE, Workers, arm, client, sql, wait_for

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
JOINS_SPEC = f"{HERE / 'pipelines' / 'fault_joins.py'}:pipeline"
RUNS = 8


@pytest.fixture
def joins(queue: str, workers: Workers) -> Iterator[Any]:
    from fault_joins import make_pipeline

    workers.specs = [JOINS_SPEC]
    with client(make_pipeline()) as pipeline:
        yield pipeline


def test_worker_sigkilled_while_joins_of_many_runs_wait_for_their_batch(
    joins: Any, workers: Workers, database_url: str, state_dir: Path
) -> None:
    from fault_joins import BRANCHES

    # one pool process, a batch closed only by its size or the message's end (no watcher
    # flush, no hand-back by time): the 8 runs' j1s come in one message, then the j2s,
    # then the j3s, whose finishes claim the 8 joins, run here in that order
    workers.start_many(
        "w1", concurrency=1, FLOWSTONE_BATCH_STEPS=str(RUNS), FLOWSTONE_FINISH_BATCH="16",
        FLOWSTONE_FINISH_BATCH_SECONDS="60", FLOWSTONE_PACK_SECONDS="600",
    )  # fmt: skip
    key = f"joins_{uuid.uuid4().hex[:6]}"
    partitions = [f"{key}-{i}" for i in range(RUNS)]
    pid_file = arm(state_dir, partitions[3], "parent")  # the fourth join holds
    runs = joins.run_many("parent", partitions, wait=False, force=True)
    pid = wait_for(lambda: pid_file.exists() and int(pid_file.read_text()), 120,
                   "the fourth join to reach its trap")  # fmt: skip
    killed = workers.kill_group(pid)
    workers.start_many(workers.name_of(killed), concurrency=1)  # its supervisor restarts it
    done = joins.wait(runs, timeout=SETTLE * 3)
    assert [r.status for r in done] == ["succeeded"] * RUNS, workers.logs()

    ids = [r.run_id for r in runs]
    mats = sql(
        database_url,
        "SELECT run_id, asset, attempt FROM flowstone.materializations WHERE run_id = ANY($1)",
        ids,
    )
    # every branch and every join of every run recorded once
    assert Counter((m["run_id"], m["asset"]) for m in mats) == Counter(
        {(r, a): 1 for r in ids for a in (*BRANCHES, "parent")}
    )
    audit = sql(
        database_url,
        "SELECT eid, run_id, asset, attempt FROM public.fault_audit WHERE run_id = ANY($1)",
        ids,
    )
    ran = Counter((a["run_id"], a["asset"]) for a in audit)
    # branches ran once; the joins whose finishes waited in the batch (the first three)
    # and the killed one ran again, on attempt 2; the joins after it once
    twice = {(ids[i], "parent") for i in range(4)}
    assert ran == Counter(
        {(r, a): 2 if (r, a) in twice else 1 for r in ids for a in (*BRANCHES, "parent")}
    ), ran
    by_eid = {a["eid"]: a for a in audit}
    for run, partition in zip(runs, partitions, strict=True):
        for asset in (*BRANCHES, "parent"):
            value = joins.get(asset, partition)
            row = by_eid[value["eid"]]  # the value under the record is one an execution wrote
            assert (row["run_id"], row["asset"]) == (run.run_id, asset)
            # every join is recorded from attempt 2: the dead worker held them all, the
            # ones after the killed one claimed (by the finishes of their runs' j3s) but
            # not started yet; the branches from attempt 1
            assert row["attempt"] == value["attempt"] == (2 if asset == "parent" else 1)
    assert [joins.get("parent", p)["v"] for p in partitions] == [6] * RUNS
