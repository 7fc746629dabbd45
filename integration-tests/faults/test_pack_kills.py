"""A worker SIGKILLed with its whole process group in the middle of a pack (several ready
steps of one run in one message, ``FLOWSTONE_PACK_STEPS``): the step it was running is
taken over when its lease expires, the pack's steps it had not started (and the pack it
had prefetched) are re-sent by the sweeper, and the run completes with every step
recorded once, holding the value of the attempt it names; user code re-ran only for the
step that was killed inside it (its crash window)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_it import Driver, Workers, arm, audit_rows, cancel_leftovers, sql

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
    pipeline = make_pipeline()
    try:
        yield pipeline
    finally:
        cancel_leftovers(pipeline)
        pipeline.close()


def test_worker_sigkilled_mid_pack(
    packs: Any, workers: Workers, database_url: str, state_dir: Path
) -> None:
    from fault_pack import ASSETS

    # one pool process, and no hand-back by time: the pack runs in order until the kill
    (first,) = workers.start_many("w1", concurrency=1, FLOWSTONE_PACK_SECONDS="600")
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
    # k03 was killed inside its user code (the crash window): it ran again, attempt 2;
    # every other step ran once, the ones the pack had not started on attempt 1
    assert ran == Counter({**dict.fromkeys(ASSETS, 1), "k03": 2}), ran
    mats = packs.store.list_materializations(packs.name, run_id=run_id, limit=100)
    for mat in mats:
        value = packs.load_materialization(mat)
        row = audit[value["eid"]]  # the value under the record is one an execution wrote
        assert row["asset"] == mat.asset
        assert (
            row["attempt"] == mat.attempt == value["attempt"] == (2 if mat.asset == "k03" else 1)
        ), (mat.asset, dict(row), mat.attempt)
    assert {s.asset: s.state for s in packs.store.list_steps(run_id)} == dict.fromkeys(
        ASSETS, "succeeded"
    )
