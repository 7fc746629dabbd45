"""DBOS Transact as a peer of the distributed benchmarks (``celery_runtime.py``, ``parallel.py``).

DBOS keeps its queues, workflow records and step outputs in a Postgres "system
database". The peer uses a database of its own on the same Postgres server as FlowStone
(``flowstone_bench_dbos_<random>``, created by :func:`create_database`, dropped by
:func:`drop_database`; no other database is touched). Workers are separate processes
(``python bench/_dbos_peer.py worker ...``), each a launched DBOS application that
dequeues from the benchmark's queues; the measuring process only enqueues with
``DBOSClient`` and counts finished workflows with one ``SELECT count(*)`` per poll.

The work, the same as FlowStone's side of each benchmark:

* independent: ``N`` workflows ``bench_independent(i)`` on the queue, each running one
  step returning ``i`` (a durable step: its output is checkpointed);
* chain: one workflow ``bench_chain(n)`` on the queue running ``n`` steps in sequence,
  each adding one to the previous step's output (DBOS's own form of a sequential
  pipeline: every step's output checkpointed before the next starts);
* fan-in: ``P`` workflows ``bench_fan_in(p)`` on the queue, each enqueueing three
  workflows ``bench_branch(p, k)`` (one step each, ``p * k``) on a second queue and
  waiting for their results (``handle.get_result``), then checking their sum.

Tuning (the documented knobs, recorded in docs/performance.md, "Peers"): worker
processes, ``worker_concurrency`` per process, the queues' ``polling_interval_sec``
(default 1 s, which caps a queue at ``worker_concurrency`` workflows per second per
process), the poll interval of ``get_result`` inside a fan-in, and enqueueing in batches
of ``enqueue_batch`` workflows per transaction (``DBOSClient.enqueue_in_transaction``),
and whether a fan-in waits with ``get_result`` or receives its branches' ``DBOS.send``
(``DBOS.recv``, the docs' pattern for results as soon as they are ready; slower here).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _cluster import PG_ADMIN, log, pg_admin, stop_worker

APP = "flowstone-bench"
QUEUE = "flowstone_bench"
BRANCH_QUEUE = "flowstone_bench_branches"
FACTORS = (1, 2, 3)
READY = "DBOS-BENCH-READY"
SCHEMA = "dbos"


@dataclass(frozen=True, slots=True)
class Tuning:
    """How the DBOS side runs: worker processes and the documented queue knobs."""

    workers: int = 1  # worker processes (DBOS applications)
    worker_concurrency: int = 128  # workflows of a queue running at once per process
    polling_interval_sec: float = 0.01  # how often a process polls each queue
    result_polling_sec: float = 0.1  # get_result's poll interval inside a fan-in
    enqueue_batch: int = 100  # workflows enqueued per transaction by the client
    fan_in_wait: str = "get_result"  # a fan-in waits with get_result or DBOS.recv
    pool_size: int = 8  # system database connections per worker process


def available() -> str | None:
    """The installed DBOS version, or None when the package is not installed."""
    try:
        from importlib.metadata import version

        import dbos  # noqa: F401
    except ImportError:
        return None
    return version("dbos")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The DBOS options every distributed benchmark accepts."""
    d = Tuning()
    parser.add_argument("--no-dbos", action="store_true", help="skip the DBOS peer")
    parser.add_argument("--dbos-workers", type=int, default=d.workers, help="DBOS worker processes")
    parser.add_argument(
        "--dbos-concurrency",
        type=int,
        default=d.worker_concurrency,
        help="DBOS worker_concurrency per process and queue",
    )
    parser.add_argument(
        "--dbos-polling",
        type=float,
        default=d.polling_interval_sec,
        help="DBOS queue polling_interval_sec",
    )
    parser.add_argument(
        "--dbos-result-polling",
        type=float,
        default=d.result_polling_sec,
        help="get_result polling interval inside a DBOS fan-in",
    )
    parser.add_argument(
        "--dbos-enqueue-batch",
        type=int,
        default=d.enqueue_batch,
        help="DBOS workflows enqueued per transaction",
    )
    parser.add_argument(
        "--dbos-fan-in-wait",
        choices=("get_result", "recv"),
        default=d.fan_in_wait,
        help="a DBOS fan-in waits on its branches' handles or receives their DBOS.send",
    )


def tuning_from(args: argparse.Namespace) -> Tuning:
    return Tuning(
        workers=args.dbos_workers,
        worker_concurrency=args.dbos_concurrency,
        polling_interval_sec=args.dbos_polling,
        result_polling_sec=args.dbos_result_polling,
        enqueue_batch=args.dbos_enqueue_batch,
        fan_in_wait=args.dbos_fan_in_wait,
        pool_size=min(8, args.dbos_concurrency + 2),
    )


def describe(tuning: Tuning) -> dict[str, Any]:
    """What the JSON line records about the peer."""
    return {"version": available(), **asdict(tuning)}


# --- databases ----------------------------------------------------------------------------
def create_database() -> tuple[str, str]:
    """Create ``flowstone_bench_dbos_<random>`` and DBOS's schema in it: (name, url)."""
    from dbos import DBOS

    name = f"flowstone_bench_dbos_{uuid.uuid4().hex[:8]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    url = "postgresql://" + PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name
    try:
        DBOS.migrate(url)
    except BaseException:
        drop_database(name)
        raise
    return name, url


def drop_database(name: str) -> None:
    if not name.startswith("flowstone_bench_dbos_"):
        raise ValueError(f"refusing to drop {name!r}: not a DBOS benchmark database")
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- workflows (registered in every process that imports this module) -----------------
def _register() -> dict[str, Any]:
    from dbos import DBOS

    @DBOS.step(name="bench_value")
    def value(i: int) -> int:
        return i

    @DBOS.step(name="bench_add_one")
    def add_one(x: int) -> int:
        return x + 1

    @DBOS.step(name="bench_times")
    def times(parent: int, k: int) -> int:
        return parent * k

    @DBOS.workflow(name="bench_independent")
    def independent(i: int) -> int:
        return value(i)

    @DBOS.workflow(name="bench_chain")
    def chain(n: int) -> int:
        x = value(0)
        for _ in range(n - 1):
            x = add_one(x)
        return x

    @DBOS.workflow(name="bench_branch")
    def branch(parent: int, k: int) -> int:
        return times(parent, k)

    @DBOS.workflow(name="bench_branch_send")
    def branch_send(parent: int, k: int, parent_id: str) -> None:
        DBOS.send(parent_id, times(parent, k))

    @DBOS.workflow(name="bench_fan_in")
    def fan_in(parent: int, result_polling_sec: float, wait: str = "get_result") -> int:
        if wait == "recv":  # each branch sends its value; the parent receives three
            me = DBOS.workflow_id
            assert me is not None
            for k in FACTORS:
                DBOS.enqueue_workflow(BRANCH_QUEUE, branch_send, parent, k, me)
            total = sum(DBOS.recv(timeout_seconds=600) for _ in FACTORS)
        else:
            handles = [DBOS.enqueue_workflow(BRANCH_QUEUE, branch, parent, k) for k in FACTORS]
            total = sum(h.get_result(polling_interval_sec=result_polling_sec) for h in handles)
        if total != sum(parent * k for k in FACTORS):
            raise ValueError(f"parent {parent} joined to {total}")
        return total

    return {"independent": independent, "chain": chain, "fan_in": fan_in}


def run_worker(url: str, tuning: Tuning, executor_id: str) -> None:
    """One DBOS worker process: launch, register the queues, serve until SIGTERM."""
    from dbos import DBOS

    _register()
    DBOS(
        config={
            "name": APP,
            "system_database_url": url,
            "sys_db_pool_size": tuning.pool_size,
            "executor_id": executor_id,
            "run_migrations": False,  # the measuring process migrated the database once
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    for name in (QUEUE, BRANCH_QUEUE):
        DBOS.register_queue(
            name,
            worker_concurrency=tuning.worker_concurrency,
            polling_interval_sec=tuning.polling_interval_sec,
            on_conflict="always_update",
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(READY, flush=True)
    stop.wait()
    DBOS.destroy(workflow_completion_timeout_sec=0)


# --- the measuring side ---------------------------------------------------------------
class Cluster:
    """Worker processes and a client on one benchmark database, for one measurement."""

    def __init__(self, url: str, tuning: Tuning, tmp: Path) -> None:
        self.url, self.tuning, self.tmp = url, tuning, tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.client: Any = None
        self.engine: Any = None

    def __enter__(self) -> Cluster:
        import sqlalchemy as sa
        from dbos import DBOSClient

        try:
            for n in range(self.tuning.workers):
                self.procs.append(self._start(n))
            self.client = DBOSClient(
                system_database_url=self.url, application_name=APP, system_database_pool_size=2
            )
            self.engine = sa.create_engine(
                self.url.replace("postgresql://", "postgresql+psycopg://", 1),
                pool_size=1,
                max_overflow=0,
            )
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, n: int) -> subprocess.Popen[bytes]:
        logfile = self.tmp / f"dbos-worker-{n}.log"
        t = self.tuning
        cmd = [
            sys.executable,
            __file__,
            "worker",
            "--url",
            self.url,
            "--executor-id",
            f"bench-{uuid.uuid4().hex[:8]}-{n}",
            "--workers",
            str(t.workers),
            "--concurrency",
            str(t.worker_concurrency),
            "--polling",
            str(t.polling_interval_sec),
            "--pool-size",
            str(t.pool_size),
        ]
        with logfile.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 120
        while READY not in logfile.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_worker(proc)
                raise RuntimeError(
                    f"DBOS worker did not start:\n{logfile.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.05)
        return proc

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.destroy()
        if self.engine is not None:
            self.engine.dispose()
        for proc in self.procs:
            stop_worker(proc)

    # enqueueing and waiting
    def enqueue(self, workflow: str, calls: list[tuple[Any, ...]]) -> None:
        """Enqueue ``workflow(*args)`` for every args tuple, ``enqueue_batch`` per commit."""
        options = {"queue_name": QUEUE, "workflow_name": workflow}
        batch = max(1, self.tuning.enqueue_batch)
        for start in range(0, len(calls), batch):
            if batch == 1:
                self.client.enqueue(options, *calls[start])
                continue
            with self.engine.begin() as conn:
                for args in calls[start : start + batch]:
                    self.client.enqueue_in_transaction(conn, options, *args)

    def wait(self, workflow: str, n: int, timeout: float = 900) -> None:
        """Until ``n`` workflows named ``workflow`` succeeded (fail on an error)."""
        import sqlalchemy as sa

        query = sa.text(
            f"SELECT count(*) FILTER (WHERE status = 'SUCCESS'), "
            f"count(*) FILTER (WHERE status IN ('ERROR', 'CANCELLED', "
            f"'MAX_RECOVERY_ATTEMPTS_EXCEEDED')) "
            f"FROM {SCHEMA}.workflow_status WHERE name = :name"
        )
        deadline = time.monotonic() + timeout
        with self.engine.connect() as conn:
            while True:
                done, failed = conn.execute(query, {"name": workflow}).one()
                conn.commit()
                if failed:
                    raise RuntimeError(
                        f"{failed} DBOS {workflow} workflows failed; "
                        f"see {self.tmp}/dbos-worker-*.log"
                    )
                if done >= n:
                    return
                for proc in self.procs:
                    if proc.poll() is not None:
                        raise RuntimeError(
                            "a DBOS worker died:\n"
                            + "".join(
                                p.read_text(errors="replace")[-2000:]
                                for p in self.tmp.glob("dbos-worker-*.log")
                            )
                        )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"DBOS {workflow}: {done}/{n} after {timeout}s")
                time.sleep(0.005)

    def results(self, workflow: str) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        f"SELECT count(*) FROM {SCHEMA}.workflow_status "
                        "WHERE name = :name AND status = 'SUCCESS'"
                    ),
                    {"name": workflow},
                ).scalar()
            )


@contextlib.contextmanager
def cluster(tuning: Tuning, tmp: Path) -> Iterator[Cluster]:
    """A fresh benchmark database with workers on it; dropped afterwards."""
    name, url = create_database()
    try:
        with Cluster(url, tuning, tmp) as c:
            yield c
    finally:
        drop_database(name)


def bench_runtime(tuning: Tuning, n: int, chain: int, tmp: Path) -> tuple[float, float]:
    """(workflows/s of ``n`` independent one-step workflows on the queue, steps/s of one
    ``chain``-step workflow run from the queue), on one set of workers."""
    with cluster(tuning, tmp) as c:
        warm = min(20, n)  # untimed: every connection and code path used once
        c.enqueue("bench_independent", [(i,) for i in range(warm)])
        c.enqueue("bench_chain", [(2,)])
        c.wait("bench_independent", warm)
        c.wait("bench_chain", 1)
        start = time.perf_counter()
        c.enqueue("bench_independent", [(i,) for i in range(n)])
        c.wait("bench_independent", warm + n)
        independent = time.perf_counter() - start
        start = time.perf_counter()
        c.enqueue("bench_chain", [(chain,)])
        c.wait("bench_chain", 2)
        sequential = time.perf_counter() - start
    log(
        f"dbos independent: {n} workflows in {independent:.2f}s; "
        f"chain: {chain} steps in {sequential:.2f}s"
    )
    return n / independent, chain / sequential


def bench_fan_in(tuning: Tuning, parents: int, tmp: Path, warmup: int) -> float:
    """Parents/s for ``parents`` workflows each enqueueing three and waiting for them."""
    with cluster(tuning, tmp) as c:
        polling = tuning.result_polling_sec
        how = tuning.fan_in_wait
        if warmup:
            c.enqueue("bench_fan_in", [(10**9 + i, polling, how) for i in range(warmup)])
            c.wait("bench_fan_in", warmup)
        start = time.perf_counter()
        c.enqueue("bench_fan_in", [(i, polling, how) for i in range(parents)])
        c.wait("bench_fan_in", warmup + parents)
        elapsed = time.perf_counter() - start
        branch = "bench_branch_send" if how == "recv" else "bench_branch"
        if c.results(branch) != 3 * (warmup + parents):
            raise RuntimeError("DBOS fan-in: not every branch succeeded")
    log(f"dbos fan-ins: {parents} parents in {elapsed:.2f}s")
    return parents / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description="DBOS peer worker (used by the benchmarks)")
    parser.add_argument("role", choices=("worker",))
    parser.add_argument("--url", required=True)
    parser.add_argument("--executor-id", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--polling", type=float, required=True)
    parser.add_argument("--pool-size", type=int, required=True)
    args = parser.parse_args()
    run_worker(
        args.url,
        Tuning(
            workers=args.workers,
            worker_concurrency=args.concurrency,
            polling_interval_sec=args.polling,
            pool_size=args.pool_size,
        ),
        args.executor_id,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
