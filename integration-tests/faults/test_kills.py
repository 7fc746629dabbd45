"""Workers (and clients) SIGKILLed with their whole process group at chosen points of a
run of the 20-asset DAG: the run still finishes, every record is written once and holds
the value of the attempt it names, and user code re-ran only inside the documented crash
windows (counted from the audit table)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from faults_it import (
    DAG_SPEC,
    FIRST_ATTEMPTS,
    ITEMS,
    SCATTER_ITEMS,
    SIGNAL_X,
    TERMINAL,
    Driver,
    Workers,
    arm,
    check_run,
    executions,
    spawn_cli,
    start,
    wait_pid,
)

pytestmark = pytest.mark.integration


def partition(name: str, n: int) -> str:
    return f"{name}_{uuid.uuid4().hex[:6]}-{n}"


def test_without_faults_every_user_function_runs_once(dag: Any, workers: Workers,
                                                       database_url: str,
                                                       state_dir: Path) -> None:
    """The control: with no fault, each asset, item, batch, the gather, the join and
    ``on_signal`` ran exactly once."""
    workers.start_many("w1", "w2")
    key = partition("control", ITEMS)
    run_id = start(dag, key)
    assert Driver(dag, run_id, key, state_dir).finish() == "succeeded", workers.logs()
    checked = check_run(dag, database_url, run_id, ITEMS)
    once = {k: v for k, v in checked.runs.items() if k[1] not in ("item", "batch")}
    assert set(once.values()) == {1}, once
    assert checked.runs[("squares", "item")] == ITEMS
    assert checked.runs[("batched", "batch")] == -(-ITEMS // 50)
    assert checked.attempts == FIRST_ATTEMPTS, checked.attempts


# (trap point, asset whose user code holds there, items): the worker running it is killed
WORKER_POINTS = {
    "asset": ("left", ITEMS),
    "item": ("item", SCATTER_ITEMS),
    "reader-page": ("page", SCATTER_ITEMS),
    "gather": ("gather", SCATTER_ITEMS),
    "join": ("join", ITEMS),
}


@pytest.mark.parametrize("where", list(WORKER_POINTS))
def test_worker_sigkilled_mid(where: str, dag: Any, workers: Workers, database_url: str,
                              state_dir: Path) -> None:
    point, n = WORKER_POINTS[where]
    workers.start_many("w1", "w2")
    key = partition(f"kill_{where}", n)
    pid_file = arm(state_dir, key, point)
    run_id = start(dag, key)
    driver = Driver(dag, run_id, key, state_dir)
    pid = driver.until(lambda: pid_file.exists() and int(pid_file.read_text()), 120,
                       f"{where} to reach its trap")
    killed = workers.kill_group(pid)
    driver.fault()
    workers.start_many(workers.name_of(killed))  # its supervisor restarts it
    assert driver.finish() == "succeeded", workers.logs()
    if where == "asset":
        checked = check_run(dag, database_url, run_id, n)
        assert checked.runs[("left", "asset")] == 2 and checked.attempts["left"] == 2
    elif where == "item":
        checked = check_run(dag, database_url, run_id, n)
        assert checked.runs[("squares", "item")] > n  # the killed chunk's items ran again
    elif where == "reader-page":
        # the reader resumed from its last checkpoint: every item appended once, each batch
        # ran (batches of chunks the killed worker held may have run twice)
        checked = check_run(dag, database_url, run_id, n)
        assert checked.runs[("batched", "batch")] >= -(-n // 50)
    elif where == "gather":
        # crash window: a gather killed before its value was committed runs again
        check_run(dag, database_url, run_id, n, gathers=2)
    else:
        # crash window: a join killed before its step finished runs again (attempt 2)
        checked = check_run(dag, database_url, run_id, n, joins=2)
        assert checked.attempts["joined"] == 2


def test_client_sigkilled_mid_signal(dag: Any, workers: Workers, database_url: str,
                                     state_dir: Path) -> None:
    """``flowstone signal`` dies inside ``on_signal``: the gate is used, the step waits.
    Recovery re-finishes the step from the payload the gate recorded (``on_signal`` runs
    a second time: its crash window)."""
    workers.start_many("w1", "w2")
    key = partition("kill_signal", ITEMS)
    run_id = start(dag, key)
    driver = Driver(dag, run_id, key, state_dir, signal=False)
    token = state_dir / f"token.{run_id}"
    driver.until(token.exists, 120, "the gate to open")
    pid_file = arm(state_dir, key, "signal")
    client = spawn_cli(state_dir, "signal", "signal", DAG_SPEC, token.read_text(),
                       "--payload", f'{{"x": {SIGNAL_X}}}')
    try:
        wait_pid(pid_file)
    except AssertionError:
        client.kill()
        client.wait()
        logs = "".join(p.read_text() for p in state_dir.glob("cli-signal-*.log"))
        raise AssertionError(f"flowstone signal never reached on_signal:\n{logs[-3000:]}") from None
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    driver.fault()
    assert driver.finish() == "succeeded", workers.logs()
    check_run(dag, database_url, run_id, ITEMS, signals=2)


def test_client_sigkilled_mid_approval_resume(dag: Any, workers: Workers, database_url: str,
                                              state_dir: Path) -> None:
    """``flowstone approve`` dies after the decision was committed, before the step was
    finished: recovery finishes the step with the approved value (no user code re-runs)."""
    workers.start_many("w1", "w2")
    key = partition("kill_approve", ITEMS)
    run_id = start(dag, key)
    driver = Driver(dag, run_id, key, state_dir, approve=False)
    driver.until(lambda: dag.store.find_approval(run_id, "approved", key), 120,
                 "the approval to be requested")
    pid_file = arm(state_dir, key, "approve")
    client = spawn_cli(state_dir, "approve", "approve", DAG_SPEC, "--run-id", run_id,
                       "--asset", "approved", "--partition", key, "--by", "faults")
    wait_pid(pid_file)
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    driver.fault()
    assert driver.finish() == "succeeded", workers.logs()
    check_run(dag, database_url, run_id, ITEMS)
    assert executions(database_url, run_id, "approve") == 1


def test_sigkill_every_3_seconds_five_times(dag: Any, workers: Workers, database_url: str,
                                           state_dir: Path) -> None:
    """The workers are killed in turn every 3 s, five times, each restarted at once; the
    items take 40 s of work in all (whatever their number) so the run is still going at
    every kill."""
    slow = {"FLOWSTONE_FAULTS_ITEM_SLEEP": str(40 / SCATTER_ITEMS)}
    workers.start_many("w1", "w2", **slow)
    key = partition("kill_repeat", SCATTER_ITEMS)
    run_id = start(dag, key)
    driver = Driver(dag, run_id, key, state_dir)
    for k in range(5):
        deadline = time.monotonic() + 3
        driver.until(lambda d=deadline: time.monotonic() >= d, 10, "3 s")  # type: ignore[misc]
        assert driver.step() not in TERMINAL, f"the run had ended before kill {k + 1}"
        name = ("w1", "w2")[k % 2]
        proc = workers.by_name[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        workers.spawn(name, **slow)
        driver.fault()
    workers.ready(*workers.by_name.values())
    assert driver.finish() == "succeeded", workers.logs()
    # crash windows: a gather or join killed mid-way runs again
    checked = check_run(dag, database_url, run_id, SCATTER_ITEMS,
                        gathers=executions(database_url, run_id, "gather"),
                        joins=executions(database_url, run_id, "join"))
    assert checked.runs[("squares", "gather")] <= 2 and checked.runs[("joined", "join")] <= 2
