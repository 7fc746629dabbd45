"""The embedded defaults under SIGKILL: a process running a DAG in-process (SQLite store,
SQLite values, finishes recorded in batches) is killed, and recoveries in new processes
finish the run. Every step is recorded once, with the value of the attempt it names; user
code re-ran only for steps whose finish had not been committed when the process died."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SCRIPT = HERE / "pipelines" / "fault_inprocess.py"
sys.path.insert(0, str(HERE / "pipelines"))

import fault_inprocess as dag  # noqa: E402

pytestmark = pytest.mark.integration


def spawn(state: Path, mode: str, run_id: str) -> subprocess.Popen[bytes]:
    with (state / f"{mode}-{time.monotonic_ns()}.log").open("wb") as log:
        return subprocess.Popen([sys.executable, str(SCRIPT), str(state), mode, run_id],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def recover(state: Path, run_id: str) -> None:
    proc = spawn(state, "recover", run_id)
    assert proc.wait(timeout=120) == 0, _logs(state)


def _logs(state: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(state.glob("*.log"))
                     if p.name != "exec.log")  # fmt: skip


def _working(state: Path, proc: subprocess.Popen[bytes]) -> bool:
    """Wait until ``proc`` has run a step (a new line in the execution log); False if it
    ended first."""
    log = state / "exec.log"
    size = log.stat().st_size if log.exists() else 0
    deadline = time.monotonic() + 60
    while not log.exists() or log.stat().st_size == size:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, _logs(state)
        time.sleep(0.005)
    return True


def executions(state: Path) -> Counter[str]:
    log = state / "exec.log"
    lines = log.read_text().split() if log.exists() else []
    return Counter(lines[0::2])


def check_recorded_once(state: Path, run_id: str) -> None:
    """The run succeeded; every step has exactly one success in the audit log and one
    record, at the attempt the step ended with, pointing at that attempt's value, which
    holds the right number."""
    db = sqlite3.connect(state / "fs.db")
    try:
        status = db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        assert status == ("succeeded",), _logs(state)
        done = Counter(r[0] for r in db.execute(
            "SELECT asset FROM audit WHERE run_id = ? AND kind = 'step_succeeded'", (run_id,)))
        want = dag.expected()
        assert done == Counter(dict.fromkeys(want, 1)), done
        rows = db.execute(
            "SELECT s.asset, s.attempt, m.attempt, m.location FROM steps s"
            " JOIN materializations m ON m.id = s.materialization_id WHERE s.run_id = ?",
            (run_id,)).fetchall()  # fmt: skip
    finally:
        db.close()
    assert len(rows) == len(want)
    p = dag.pipeline(state)
    try:
        for asset, step_attempt, mat_attempt, location in rows:
            assert step_attempt == mat_attempt, (asset, step_attempt, mat_attempt)
            suffix = f"/a{mat_attempt}" if mat_attempt else ""
            assert location.endswith(f"/{run_id}{suffix}"), (asset, location)
            assert p.get(asset) == want[asset], asset  # (the only run of this file)
    finally:
        p.close()


def test_without_faults_each_asset_runs_once(tmp_path: Path) -> None:
    run_id = f"control-{uuid.uuid4().hex[:6]}"
    assert spawn(tmp_path, "start", run_id).wait(timeout=120) == 0, _logs(tmp_path)
    check_recorded_once(tmp_path, run_id)
    assert executions(tmp_path) == Counter(dict.fromkeys(dag.expected(), 1))


def test_a_process_killed_in_a_step_reruns_only_that_step(tmp_path: Path) -> None:
    """Killed while ``l2_7`` holds: the finishes of its layer that waited in the worker's
    batch were recorded meanwhile (after ``batch_seconds``), so the recovery runs
    ``l2_7`` again and nothing else twice."""
    run_id = f"step-{uuid.uuid4().hex[:6]}"
    (tmp_path / "trap.l2_7").write_text("hold")
    proc = spawn(tmp_path, "start", run_id)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid.l2_7").exists():
        assert time.monotonic() < deadline and proc.poll() is None, _logs(tmp_path)
        time.sleep(0.02)
    time.sleep(0.5)  # well past batch_seconds: the batch-mates' finishes are recorded
    kill(proc)
    recover(tmp_path, run_id)
    check_recorded_once(tmp_path, run_id)
    runs = executions(tmp_path)
    assert {a: n for a, n in runs.items() if n != 1} == {}, runs  # l2_7's first never ended
    assert set(runs) == set(dag.expected())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_processes_killed_at_random_points_lose_and_double_count_nothing(
    tmp_path: Path, seed: int
) -> None:
    """Four processes in a row are killed at a random moment (in a step, in a batch's
    flush, between a value and its record...), the fifth finishes: each step recorded
    once, with its own attempt's value. Re-runs stay within what a batch can hold."""
    rng = random.Random(seed)
    run_id = f"random-{seed}-{uuid.uuid4().hex[:6]}"
    proc = spawn(tmp_path, "start", run_id)
    kills = 0
    for _ in range(4):
        if not _working(tmp_path, proc):
            break  # it finished the run
        time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is not None:
            break
        kill(proc)
        kills += 1
        proc = spawn(tmp_path, "recover", run_id)
    assert proc.wait(timeout=120) == 0, _logs(tmp_path)
    recover(tmp_path, run_id)  # (settled already unless the last one was killed)
    check_recorded_once(tmp_path, run_id)
    runs = executions(tmp_path)
    assert set(runs) == set(dag.expected())
    # a killed process re-runs at most what it had run but not recorded: the steps of its
    # unrecorded batches (at most a layer per worker thread it had)
    assert sum(runs.values()) - len(runs) <= kills * 2 * dag.WIDTH, runs
