"""A worker SIGKILLed with its whole process group in the middle of a pack (several ready
steps of one run in one message, ``FLOWSTONE_PACK_STEPS``): the step it was running is
taken over when its lease expires, the pack's steps it had not started are taken over
too where they were claimed with the pack (batched finishes: the pack is claimed when its
message starts) and re-sent by the sweeper where not, as is the pack it had prefetched;
the run completes with every step recorded once, holding the value of the attempt it
names.

User code re-runs only inside the crash window: with ``FLOWSTONE_FINISH_BATCH=1`` that is
the step killed inside its code; with batched finishes it also holds the steps that ran
before it and whose finishes waited for the batch (not recorded, so still ``running``
under their claims): they are taken over and run again on attempt 2, and each is still
recorded once."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_it import Driver, Workers, arm, audit_rows, client, sql

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
PACK_SPEC = f"{HERE / 'pipelines' / 'fault_pack.py'}:pipeline"


@pytest.fixture
def packs(queue: str, workers: Workers, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The pack pipeline as this test's client, told the workers have 2 slots: its 16 ready
    steps go 8 to a message."""
    from fault_pack import make_pipeline

    workers.specs = [PACK_SPEC]
    monkeypatch.setenv("FLOWSTONE_WORKER_SLOTS", "2")
    monkeypatch.setenv("FLOWSTONE_PACK_STEPS", "8")
    with client(make_pipeline()) as pipeline:
        yield pipeline


@pytest.mark.parametrize(
    ("finish_batch", "rerun", "held"),
    [("1", ("k03",), ()), ("8", ("k00", "k01", "k02", "k03"), ("k04", "k05", "k06", "k07"))],
    ids=["finish-each", "finish-batched"],
)
def test_worker_sigkilled_mid_pack(
    packs: Any,
    workers: Workers,
    database_url: str,
    state_dir: Path,
    finish_batch: str,
    rerun: tuple[str, ...],
    held: tuple[str, ...],
) -> None:
    from fault_pack import ASSETS

    # one pool process, and no hand-back by time: the pack runs in order until the kill;
    # batched, no finish is recorded before the batch is full (8) or the message ends
    (first,) = workers.start_many(
        "w1", concurrency=1, FLOWSTONE_PACK_SECONDS="600", FLOWSTONE_FINISH_BATCH=finish_batch,
        FLOWSTONE_FINISH_BATCH_SECONDS="60",
    )
    key = f"pack_{uuid.uuid4().hex[:6]}"
    pid_file = arm(state_dir, key, "k03")  # the fourth step of the first pack holds
    run_id = packs.run(partition=key, wait=False, force=True).run_id
    driver = Driver(packs, run_id, key, state_dir, approve=False, signal=False)
    pid = driver.until(
        lambda: pid_file.exists() and int(pid_file.read_text()), 120, "k03 to reach its trap"
    )
    log = workers.log_path(first).read_text()
    received = [
        line for line in log.splitlines() if "flowstone.run_step[" in line and "] received" in line
    ]
    assert len(received) <= 2, log[-3000:]  # 16 steps came in (at most) two messages
    killed = workers.kill_group(pid)
    driver.fault()
    workers.start_many(workers.name_of(killed), concurrency=1)  # its supervisor restarts it
    assert driver.finish() == "succeeded", workers.logs()

    rows = sql(
        database_url,
        "SELECT asset, state, attempt FROM flowstone.materializations WHERE run_id = $1",
        run_id,
    )
    assert Counter(r["asset"] for r in rows) == Counter(ASSETS)  # each recorded once
    assert {r["state"] for r in rows} == {"succeeded"}
    audit = {r["eid"]: r for r in audit_rows(database_url, run_id)}
    ran = Counter(r["asset"] for r in audit.values())
    # k03 was killed inside its user code; batched, k00-k02 had run but their finishes
    # were waiting for the batch: those ran again, attempt 2; every other step ran once:
    # batched, the rest of the pack (claimed with it, not started) on attempt 2, taken
    # over; the steps of the prefetched pack (and, one by one, the rest of the first) on 1
    assert ran == Counter({**dict.fromkeys(ASSETS, 1), **dict.fromkeys(rerun, 2)}), ran
    second = set(rerun) | set(held)  # recorded from attempt 2
    mats = packs.store.list_materializations(packs.name, run_id=run_id, limit=100)
    for mat in mats:
        value = packs.load_materialization(mat)
        row = audit[value["eid"]]  # the value under the record is one an execution wrote
        assert row["asset"] == mat.asset
        assert (
            row["attempt"] == mat.attempt == value["attempt"] == (2 if mat.asset in second else 1)
        ), (mat.asset, dict(row), mat.attempt)
    assert {s.asset: s.state for s in packs.store.list_steps(run_id)} == dict.fromkeys(
        ASSETS, "succeeded"
    )


def test_postgres_connections_terminated_before_a_batch_is_recorded(
    packs: Any, workers: Workers, database_url: str, state_dir: Path
) -> None:
    """Every connection to the database is terminated inside the last step of a pack,
    while the finishes of the seven before it wait for the batch (in the worker's memory
    only): the batch is still recorded, on fresh connections, every step once, and no
    asset's code runs twice."""
    from fault_pack import ASSETS

    # batches close only with the message (no watcher flush), one pool process
    workers.start_many(
        "w1", concurrency=1, FLOWSTONE_PACK_SECONDS="600", FLOWSTONE_FINISH_BATCH_SECONDS="60"
    )
    key = f"pgpack_{uuid.uuid4().hex[:6]}"
    pid_file = arm(state_dir, key, "k07", "pgkill")  # the first pack's last step
    run_id = packs.run(partition=key, wait=False, force=True).run_id
    driver = Driver(packs, run_id, key, state_dir, approve=False, signal=False)
    assert driver.finish() == "succeeded", workers.logs()
    assert pid_file.exists()  # the trap fired
    rows = sql(
        database_url,
        "SELECT asset, state, attempt FROM flowstone.materializations WHERE run_id = $1",
        run_id,
    )
    assert Counter(r["asset"] for r in rows) == Counter(ASSETS)  # each recorded once
    assert {(r["state"], r["attempt"]) for r in rows} == {("succeeded", 1)}
    ran = Counter(r["asset"] for r in audit_rows(database_url, run_id))
    assert ran == Counter(dict.fromkeys(ASSETS, 1)), ran  # nothing ran twice
