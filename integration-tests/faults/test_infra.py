"""Faults of the infrastructure around a run of the 20-asset DAG: Postgres connections
terminated, the broker's database flushed, every message delivered twice, a worker whose
clock runs 400 s ahead, a worker paused past its lease, and a warm shutdown of every
worker. Each run must finish with every record written once, holding the value of the
attempt it names."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from faults_it import (
    CLOCK_DIR,
    FIRST_ATTEMPTS,
    ITEMS,
    LEASE,
    SCATTER_ITEMS,
    TERMINAL,
    WORKER_ENV,
    Driver,
    Workers,
    arm,
    check_run,
    executions,
    publishing_twice,
    start,
    wait_for,
)

pytestmark = pytest.mark.integration


def partition(name: str, n: int) -> str:
    return f"{name}_{uuid.uuid4().hex[:6]}-{n}"


def ran_once(checked: Any) -> dict[tuple[str, str], int]:
    """The (asset, kind) pairs whose user code ran more than once (items and batches
    excepted: their chunks may run twice, they are recorded once)."""
    return {k: v for k, v in checked.runs.items() if k[1] not in ("item", "batch") and v != 1}


# where: the trap points that terminate every connection of the run store's database
PG_POINTS = {"scatter": ("item", "gather"), "finish": ("finish",)}


@pytest.mark.parametrize("where", list(PG_POINTS))
def test_every_postgres_connection_terminated_mid(where: str, dag: Any, workers: Workers,
                                                  database_url: str, state_dir: Path) -> None:
    """``pg_terminate_backend`` of every connection to the database, from inside a worker:
    mid-scatter (at the middle item, then again inside the gather) or mid-finish (between
    storing ``merge``'s value and its ``finish_step``)."""
    workers.start_many("w1", "w2")
    n = SCATTER_ITEMS if where == "scatter" else ITEMS
    key = partition(f"pg_{where}", n)
    pid_files = [arm(state_dir, key, point, "pgkill") for point in PG_POINTS[where]]
    run_id = start(dag, key)
    driver = Driver(dag, run_id, key, state_dir)
    wait_for(lambda: all(p.exists() for p in pid_files) or driver.step() in TERMINAL, 120,
             "the traps to fire")
    driver.fault()
    assert driver.finish() == "succeeded", workers.logs()
    assert all(p.exists() for p in pid_files)  # every trap fired
    checked = check_run(dag, database_url, run_id, n)
    assert not ran_once(checked), ran_once(checked)


def test_redis_database_flushed_mid_run(dag: Any, workers: Workers, database_url: str,
                                        redis_url: str, state_dir: Path) -> None:
    """FLUSHDB of the broker's database while the scatter runs: every queued message
    (steps, chunks) is lost; the sweeper re-sends what Postgres says is still to do."""
    import redis

    # one message reserved per worker process: the window's other chunks wait in Redis
    workers.start_many("w1", "w2", FLOWSTONE_FAULTS_ITEM_SLEEP=str(10 / SCATTER_ITEMS),
                       FLOWSTONE_PREFETCH="1")
    key = partition("redis_flush", SCATTER_ITEMS)
    run_id = start(dag, key)
    driver = Driver(dag, run_id, key, state_dir)
    driver.until(lambda: executions(database_url, run_id, "item") > SCATTER_ITEMS // 4, 120,
                 "a quarter of the items to run")
    broker = redis.Redis.from_url(redis_url)
    queued = broker.llen(workers.queue)
    broker.flushdb()
    driver.fault()
    assert queued > 0, "no message was waiting in the queue when it was flushed"
    assert driver.finish() == "succeeded", workers.logs()
    checked = check_run(dag, database_url, run_id, SCATTER_ITEMS)
    assert not ran_once(checked), ran_once(checked)


def test_every_message_delivered_twice(dag: Any, workers: Workers, database_url: str,
                                       state_dir: Path) -> None:
    """Every message the client and the workers publish (steps, scatter chunks) is
    published twice with the same task id, as a broker redelivering it would."""
    workers.start_many("w1", "w2", FLOWSTONE_FAULTS_DUPLICATE="1")
    key = partition("twice", ITEMS)
    with publishing_twice():
        run_id = start(dag, key)
        driver = Driver(dag, run_id, key, state_dir)
        assert driver.finish() == "succeeded", workers.logs()
    checked = check_run(dag, database_url, run_id, ITEMS)
    assert not ran_once(checked), ran_once(checked)
    assert checked.attempts == FIRST_ATTEMPTS, checked.attempts


def test_one_worker_clock_400_seconds_ahead(dag: Any, workers: Workers, database_url: str,
                                            state_dir: Path) -> None:
    """A worker whose wall clock runs 400 s ahead (clock/sitecustomize.py) joins while
    ``left`` holds the only process of the other worker for two leases. Every lease
    comparison is the database's, so the live lease is not taken over: every asset runs
    once."""
    held = workers.start_many("w1", concurrency=1)[0]
    key = partition("skew", ITEMS)
    pid_file = arm(state_dir, key, "left", f"hold:{2 * LEASE}")
    run_id = start(dag, key)
    driver = Driver(dag, run_id, key, state_dir)
    pid = driver.until(lambda: pid_file.exists() and int(pid_file.read_text()), 60,
                       "left to start")
    assert os.getpgid(pid) == held.pid
    fast = workers.spawn("fast", FLOWSTONE_FAULTS_CLOCK_SKEW="400",
                         PYTHONPATH=os.pathsep.join([str(CLOCK_DIR), WORKER_ENV["PYTHONPATH"]]))
    workers.ready(fast)
    assert "skewed by +400 s" in workers.log_path(fast).read_text()
    assert driver.finish() == "succeeded", workers.logs()
    checked = check_run(dag, database_url, run_id, ITEMS)
    assert not ran_once(checked), ran_once(checked)
    assert checked.attempts["left"] == 1


def test_stale_runner_paused_past_its_lease(dag: Any, workers: Workers, database_url: str,
                                            state_dir: Path) -> None:
    """The worker running ``left`` is SIGSTOPped; its lease expires, the other worker runs
    ``left`` again (attempt 2) and commits. SIGCONT: the stale attempt returns, its finish
    is refused, and the record keeps attempt 2's value."""
    workers.start_many("w1", "w2")
    key = partition("stale", ITEMS)
    pid_file = arm(state_dir, key, "left", "hold:1")
    run_id = start(dag, key)
    driver = Driver(dag, run_id, key, state_dir)
    pid = driver.until(lambda: pid_file.exists() and int(pid_file.read_text()), 60,
                       "left to start")
    paused = workers.kill_group(pid, signal.SIGSTOP)
    driver.fault()
    try:
        driver.until(lambda: executions(database_url, run_id, "asset", "left") == 2
                     and dag.store.get_step(run_id, "left", key).state == "succeeded", 60,
                     "another worker to take left over")
    finally:
        os.killpg(paused.pid, signal.SIGCONT)
    assert driver.finish() == "succeeded", workers.logs()
    checked = check_run(dag, database_url, run_id, ITEMS,
                        gathers=executions(database_url, run_id, "gather"),
                        joins=executions(database_url, run_id, "join"))
    assert checked.attempts["left"] == 2 and checked.runs[("left", "asset")] == 2
    wait_for(lambda: "the finish of attempt 1" in workers.logs(0), 60,
             "the stale attempt's finish to be refused and logged")


def test_sigterm_to_every_worker_mid_run_then_restart(dag: Any, workers: Workers,
                                                      database_url: str,
                                                      state_dir: Path) -> None:
    """Warm shutdown: SIGTERM to both workers while ``left`` runs; they finish what they
    hold and exit 0. Started again, they finish the run, and nothing ran twice."""
    workers.start_many("w1", "w2")
    key = partition("drain", ITEMS)
    pid_file = arm(state_dir, key, "left", "hold:2")
    run_id = start(dag, key)
    driver = Driver(dag, run_id, key, state_dir)
    driver.until(pid_file.exists, 60, "left to start")
    old = list(workers.by_name.values())
    for proc in old:
        proc.send_signal(signal.SIGTERM)
    driver.fault()
    assert [proc.wait(timeout=60) for proc in old] == [0, 0]
    workers.start_many("w1", "w2")
    assert driver.finish() == "succeeded", workers.logs()
    checked = check_run(dag, database_url, run_id, ITEMS)
    assert not ran_once(checked), ran_once(checked)
    assert checked.attempts["left"] == 1
