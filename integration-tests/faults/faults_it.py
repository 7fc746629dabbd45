"""The fault suite's harness: worker processes to kill, traps, driving a run to its end,
and the checks every fault test makes against Postgres.

Settings (environment; the defaults fit a 2-CPU machine, CI may raise them):
  FLOWSTONE_FAULTS_ITEMS          items of each scatter in the DAG (default 400)
  FLOWSTONE_FAULTS_SCATTER_ITEMS  items in the scatter-heavy faults (default 2000)
  FLOWSTONE_FAULTS_LEASE          lease seconds on the workers (default 5)
  FLOWSTONE_FAULTS_RECOVER_AFTER  seconds a step may stay ready before it is re-sent (3)
  FLOWSTONE_FAULTS_SETTLE         seconds a faulted run gets to finish (default 60)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
CELERY_IT = HERE.parent / "celery"
for _path in (CELERY_IT, HERE / "pipelines"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from celery_it import Cluster, wait_for  # noqa: E402

from flowstone.engine.runner import hash_token  # noqa: E402

DAG_SPEC = f"{HERE / 'pipelines' / 'fault_dag.py'}:pipeline"
CLOCK_DIR = HERE / "clock"  # sitecustomize.py that skews a process's clock


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, "") or default)


ITEMS = env_int("FLOWSTONE_FAULTS_ITEMS", 400)
SCATTER_ITEMS = env_int("FLOWSTONE_FAULTS_SCATTER_ITEMS", 2000)
LEASE = env_int("FLOWSTONE_FAULTS_LEASE", 5)
RECOVER_AFTER = env_int("FLOWSTONE_FAULTS_RECOVER_AFTER", 3)
SETTLE = env_int("FLOWSTONE_FAULTS_SETTLE", 60)
SIGNAL_X = 5
TERMINAL = ("succeeded", "failed", "cancelled")
ASSETS = ("source", "left", "right", "diamond", "numbers", "squares", "batched", "sq_total",
          "b_total", "br_a", "br_b", "br_c", "joined", "approved", "after_approval", "gated",
          "after_gate", "merge", "final", "summary")
# The attempt of each record when nothing failed: 1, but for the steps finished through a
# deferred wait (the gate's, the scatters'): its resolver claims the step as the next attempt.
FIRST_ATTEMPTS = {a: 2 if a in ("gated", "squares", "batched") else 1 for a in ASSETS}
WORKER_ENV = {
    "FLOWSTONE_LEASE_SECONDS": str(LEASE),
    "FLOWSTONE_RECOVER_AFTER": str(RECOVER_AFTER),
    "FLOWSTONE_SWEEP_INTERVAL": "1",
    "FLOWSTONE_INFRA_RETRIES": "20",
    "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep),
}


# --- workers -------------------------------------------------------------------------------
class Workers(Cluster):
    """Worker processes (``flowstone worker``), each in a process group of its own so a test
    can SIGKILL, SIGSTOP or SIGTERM one worker with its whole prefork pool."""

    def __init__(self, broker: str, queue: str, database_url: str, state_dir: Path,
                 specs: list[str]) -> None:
        super().__init__(broker, queue, database_url, state_dir, specs=specs)
        self.env.update(WORKER_ENV)
        self.by_name: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, *, concurrency: int = 2, **env: str) -> subprocess.Popen[bytes]:
        log = self.state_dir / f"{self.queue}-{name}.{len(self.procs)}.log"
        cmd = [sys.executable, "-m", "flowstone", "worker"]
        for spec in self.specs:
            cmd += ["--pipeline", spec]
        cmd += ["--concurrency", str(concurrency), "--hostname",
                f"{name}.{len(self.procs)}-{self.queue}@%h", "--", "--without-mingle",
                "--without-gossip"]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env={**self.env, **env}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((proc, log))
        self.by_name[name] = proc
        return proc

    def ready(self, *procs: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 90
        for proc in procs:
            log = self.log_path(proc)
            while b" ready." not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)

    def start_many(self, *names: str, concurrency: int = 2,
                   **env: str) -> list[subprocess.Popen[bytes]]:
        procs = [self.spawn(name, concurrency=concurrency, **env) for name in names]
        self.ready(*procs)
        return procs

    def log_path(self, proc: subprocess.Popen[bytes]) -> Path:
        return next(log for p, log in self.procs if p is proc)

    def logs(self, tail: int = 4000) -> str:
        """The workers' logs (the last ``tail`` characters of each; 0: all of it)."""
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-tail:]}"
                         for _, log in self.procs)

    def kill_group(self, pid: int, sig: int = signal.SIGKILL) -> subprocess.Popen[bytes]:
        """Send ``sig`` to the process group of the worker that owns process ``pid``."""
        pgid = os.getpgid(pid)
        proc = next(p for p, _ in self.procs if p.pid == pgid)
        os.killpg(pgid, sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=30)
        return proc

    def stop_all(self) -> None:
        """SIGTERM every worker (waking a stopped one); one still busy after 5 s (a trap
        holding it) is SIGKILLed with its pool: the test is over."""
        for proc, _ in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while any(p.poll() is None for p, _ in self.procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        super().stop_all()

    def name_of(self, proc: subprocess.Popen[bytes]) -> str:
        return next(n for n, p in self.by_name.items() if p is proc)


def group_rss_kib(pgid: int) -> int:
    """Resident memory of every process in a process group (KiB, from /proc)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # pgrp is the 5th field overall
                continue
            text = (status.parent / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def spawn_cli(state_dir: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    """``flowstone <args>`` in a process group of its own (a client a test may kill)."""
    log = state_dir / f"cli-{name}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "flowstone", *args],
                                env={**os.environ, **WORKER_ENV}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


# --- Postgres ------------------------------------------------------------------------------
def sql(url: str, query: str, *args: Any) -> list[Any]:
    """Run one statement on a connection of its own; the rows it returned."""
    import asyncpg

    async def go() -> list[Any]:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=10)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


# --- traps ---------------------------------------------------------------------------------
def arm(state_dir: Path, partition: str, point: str, action: str = "hold:120") -> Path:
    """Arm the trap of ``point`` for ``partition``; returns the file its pid will be in."""
    (state_dir / f"trap.{partition}.{point}").write_text(action)
    return state_dir / f"pid.{partition}.{point}"


def wait_pid(pid_file: Path, timeout: float = 120, what: str = "") -> int:
    wait_for(pid_file.exists, timeout, what or f"the trap {pid_file.name} to be hit")
    return int(pid_file.read_text())


# --- runs ----------------------------------------------------------------------------------
def start(pipeline: Any, partition: str) -> str:
    return str(pipeline.run("summary", partition, wait=False).run_id)


@dataclass
class Driver:
    """Takes a run of the DAG to its end: approves its approval and signals its gate as soon
    as they exist (in this process, unless the test does it itself)."""

    pipeline: Any
    run_id: str
    partition: str
    state_dir: Path
    approve: bool = True
    signal: bool = True
    errors: list[str] = field(default_factory=list)  # what polling met (and survived)
    fault_at: float | None = None

    def step(self) -> str:
        run = self.pipeline.store.get_run(self.run_id)
        if run.status in TERMINAL:
            return str(run.status)
        if self.approve:
            found = self.pipeline.store.find_approval(self.run_id, "approved", self.partition)
            if found is not None and found.status == "pending":
                self.pipeline.approve(found.id, by="faults")
                self.approve = False
        token = self.state_dir / f"token.{self.run_id}"
        if self.signal and token.exists():
            text = token.read_text()
            # ``gated`` writes its token before it returns the gate, which its finish_step
            # records: a signal in between is refused as an unknown token (a terminated
            # connection that delays that finish makes it likely), so wait for the record
            if self.pipeline.store.get_gate(hash_token(text)) is not None:
                self.pipeline.signal(text, {"x": SIGNAL_X})
                self.signal = False
        return str(run.status)

    def until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        def check() -> Any:
            try:
                self.step()
                return predicate()
            except Exception as exc:  # this client's own connections may be the fault's
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return None

        return wait_for(check, timeout, what)

    def fault(self) -> None:
        """Note that the fault happened now (:meth:`finish` reports the time since)."""
        self.fault_at = time.monotonic()

    def finish(self, timeout: float = SETTLE) -> str:
        status = str(self.until(lambda: self.step() in TERMINAL and self.step(), timeout,
                                f"run {self.run_id} to finish"))
        if self.fault_at is not None:  # shown with pytest -s (docs/reliability.md figures)
            print(f"\nfault recovery [{self.partition}]: the run {status} "
                  f"{time.monotonic() - self.fault_at:.1f} s after the fault")
        return status


def audit_rows(url: str, run_id: str) -> list[Any]:
    return sql(url, "SELECT DISTINCT ON (eid) eid, asset, kind, attempt, item, pid "
                    "FROM public.fault_audit WHERE run_id = $1 ORDER BY eid, id", run_id)


def executions(url: str, run_id: str, kind: str, asset: str | None = None) -> int:
    rows = sql(url, "SELECT count(DISTINCT eid) FROM public.fault_audit WHERE run_id = $1 "
                    "AND kind = $2 AND ($3::text IS NULL OR asset = $3)", run_id, kind, asset)
    return int(rows[0][0])


@dataclass(frozen=True)
class Checked:
    """What :func:`check_run` found: how often each asset's user code ran (by kind)."""

    runs: Counter[tuple[str, str]]  # (asset, kind) -> executions
    attempts: dict[str, int]  # asset -> attempt of its record


def check_run(pipeline: Any, url: str, run_id: str, n: int, *, gathers: int = 1,
              joins: int = 1, signals: int = 1) -> Checked:
    """The final state in Postgres, as every fault test asserts it:

    * the run succeeded, with one succeeded materialization per asset of the DAG;
    * each scatter recorded every item once (one row per index, all succeeded), and the
      barrier's counts say so;
    * the value under every record is the one its attempt wrote: loaded through the IO
      manager, it names an audited execution of that asset, of that attempt (assets and
      the join), and every item result names an execution of that item;
    * the gather, the join and ``on_signal`` ran ``gathers`` / ``joins`` / ``signals``
      times (1 unless the test documents a crash window that allows a re-run).
    """
    from fault_dag import expected_summary

    from flowstone.codec import decode_value

    run = sql(url, "SELECT status, error FROM flowstone.runs WHERE run_id = $1", run_id)
    assert run and run[0]["status"] == "succeeded", f"run {run_id}: {run and dict(run[0])}"
    rows = sql(url, "SELECT asset, state, attempt FROM flowstone.materializations "
                    "WHERE run_id = $1", run_id)
    per_asset = Counter(r["asset"] for r in rows)
    assert per_asset == Counter(ASSETS), f"materializations per asset: {per_asset}"
    assert {r["state"] for r in rows} == {"succeeded"}, [dict(r) for r in rows]
    audit = {r["eid"]: r for r in audit_rows(url, run_id)}
    runs = Counter((r["asset"], r["kind"]) for r in audit.values())
    mats = pipeline.store.list_materializations(pipeline.name, run_id=run_id, limit=100)
    attempts = {}
    for mat in mats:
        value = pipeline.load_materialization(mat)
        attempts[mat.asset] = mat.attempt
        if mat.asset == "batched":
            batch_eids = {e for e, r in audit.items() if r["kind"] == "batch"}
            assert [v for v, _ in value] == [3 * i for i in range(n)]
            assert {eid for _, eid in value} <= batch_eids, "a batch value nobody audited"
            continue
        kind = {"squares": "gather", "gated": "signal", "joined": "join"}.get(mat.asset, "asset")
        row = audit.get(value["eid"])
        assert row is not None, f"{mat.asset}: the recorded value {value} was never audited"
        assert (row["asset"], row["kind"]) == (mat.asset, kind), (dict(row), mat)
        if kind in ("asset", "join"):
            assert row["attempt"] == mat.attempt == value["attempt"], (
                f"{mat.asset}: record of attempt {mat.attempt} holds the value of attempt "
                f"{row['attempt']}")
            assert row["pid"] == value["pid"]
    assert pipeline.load_materialization(
        next(m for m in mats if m.asset == "summary"))["v"] == expected_summary(n, SIGNAL_X)
    barriers = sql(url, "SELECT id, asset, state, succeeded, failed FROM "
                        "flowstone.scatter_barriers WHERE run_id = $1", run_id)
    assert sorted(b["asset"] for b in barriers) == ["batched", "squares"], barriers
    item_eids = {(r["item"], e) for e, r in audit.items() if r["kind"] == "item"}
    for b in barriers:
        assert (b["state"], b["succeeded"], b["failed"]) == ("succeeded", n, 0), dict(b)
        items = sql(url, "SELECT idx, state, result FROM flowstone.scatter_items "
                         "WHERE barrier_id = $1", b["id"])
        assert len(items) == n and len({i["idx"] for i in items}) == n
        assert {i["state"] for i in items} == {"succeeded"}
        if b["asset"] == "squares":
            for i in items:
                result = decode_value(i["result"].encode())
                assert result[0] == i["idx"] ** 2
                assert (i["idx"], result[1]) in item_eids, f"item {i['idx']}: {result}"
    assert runs[("squares", "gather")] == gathers, f"gather ran {runs[('squares', 'gather')]}x"
    assert runs[("joined", "join")] == joins, f"join ran {runs[('joined', 'join')]}x"
    assert runs[("gated", "signal")] == signals, f"on_signal ran {runs[('gated', 'signal')]}x"
    return Checked(runs, attempts)


@contextlib.contextmanager
def client(pipeline: Any) -> Iterator[Any]:
    """``pipeline`` as a test's client; the runs the test leaves going are cancelled at its
    end, and the pipeline is closed."""
    try:
        yield pipeline
    finally:
        cancel_leftovers(pipeline)
        pipeline.close()


def cancel_leftovers(pipeline: Any) -> None:
    """Cancel the runs a failed test left going, so later tests' sweepers leave them be."""
    for status in ("running", "waiting"):
        for run in pipeline.store.list_runs(pipeline=pipeline.name, status=status, limit=1000):
            with contextlib.suppress(Exception):
                pipeline.cancel(run.run_id)


# --- duplicate delivery --------------------------------------------------------------------
def publish_twice() -> None:
    """Every message this process publishes (steps, scatter chunks, readers) is sent twice,
    with the same task id: what a broker redelivering each message does."""
    from kombu.messaging import Producer

    if getattr(Producer.publish, "faults_twice", False):
        return
    original = Producer.publish

    def twice(self: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        original(self, body, *args, **kwargs)
        return original(self, body, *args, **kwargs)

    twice.faults_twice = True  # type: ignore[attr-defined]
    Producer.publish = twice  # type: ignore[method-assign]


@contextlib.contextmanager
def publishing_twice() -> Iterator[None]:
    from kombu.messaging import Producer

    original = Producer.publish
    publish_twice()
    try:
        yield
    finally:
        Producer.publish = original  # type: ignore[method-assign]
