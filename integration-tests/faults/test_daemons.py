"""Two worker sweepers and two ``flowstone daemon`` processes evaluate the same schedules
and sensors at once: each schedule tick and each sensor ``run_key`` fires one run."""

from __future__ import annotations

import signal
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from faults_it import HERE, TERMINAL, Workers, spawn_cli, sql, wait_for

pytestmark = pytest.mark.integration

DAEMON_SPEC = f"{HERE / 'pipelines' / 'fault_daemons.py'}:pipeline"


def evaluators(url: str, kind: str) -> int:
    """How many distinct processes evaluated the schedule or the sensor."""
    return int(sql(url, "SELECT count(DISTINCT pid) FROM public.fault_audit WHERE kind = $1",
                   kind)[0][0])


def evaluations(url: str, kind: str) -> int:
    return int(sql(url, "SELECT count(*) FROM public.fault_audit WHERE kind = $1", kind)[0][0])


def test_two_sweepers_and_two_daemons_fire_each_tick_and_key_once(
        queue: str, workers: Workers, database_url: str, state_dir: Path) -> None:
    from fault_daemons import KEYS, make_pipeline

    pipeline = make_pipeline()
    daemons: list[Any] = []
    try:
        # ten minutes of ticks are due at the first evaluation (catch_up="all")
        now = sql(database_url, "SELECT now()")[0][0]
        assert pipeline.store.set_cursor("schedule:faults_daemons:every_minute",
                                         (now - timedelta(minutes=10)).isoformat(),
                                         expected=None)
        workers.specs = [DAEMON_SPEC]
        workers.start_many("w1", "w2")
        daemons = [spawn_cli(state_dir, f"daemon{i}", "daemon", DAEMON_SPEC, "--interval", "1")
                   for i in range(2)]
        # the sensor's five keys are contested every second by all four; who evaluates the
        # ten due ticks first is a race (the others then find them taken or not yet due)
        wait_for(lambda: evaluators(database_url, "sensor_eval") >= 3, 90,
                 "three or more processes to evaluate the sensor")
        wait_for(lambda: evaluations(database_url, "schedule_eval") >= 10, 90,
                 "the schedule's due ticks to be evaluated")
        runs = wait_for(lambda: (r := pipeline.store.list_runs(pipeline="faults_daemons",
                                                               limit=1000))
                        and all(x.status in TERMINAL for x in r)
                        and sum(1 for x in r if "tick" in x.tags) >= 10
                        and sum(1 for x in r if x.partition.startswith("sensor-")) >= 5
                        and r, 90, "the fired runs to finish")
        # a few more evaluations by everyone, now that every tick and key is taken
        seen = evaluations(database_url, "sensor_eval")
        wait_for(lambda: evaluations(database_url, "sensor_eval") >= seen + 8, 60,
                 "more sensor evaluations")
        runs = pipeline.store.list_runs(pipeline="faults_daemons", limit=1000)
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in daemons:
            daemon.wait(timeout=30)
        pipeline.close()
    ticks = Counter(r.tags["tick"] for r in runs if "tick" in r.tags)
    keys = Counter(r.partition for r in runs if "tick" not in r.tags)
    assert len(ticks) >= 10 and set(ticks.values()) == {1}, ticks
    assert keys == Counter(f"sensor-{k}" for k in KEYS), keys
    assert {r.status for r in runs} == {"succeeded"}
    executed = sql(database_url, "SELECT run_id, count(DISTINCT eid) AS n FROM "
                                 "public.fault_audit WHERE kind = 'asset' GROUP BY run_id")
    assert {r["run_id"]: r["n"] for r in executed} == {r.run_id: 1 for r in runs}
