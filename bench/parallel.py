"""Parallel joins on Celery: FlowStone parallel assets vs the same work as Celery chords.

One run, same worker settings for both sides (one worker process, prefork pool,
``--concurrency`` children, the FlowStone Celery app configuration: JSON only, late acks,
Redis broker):

* FlowStone: ``--parents`` runs of a parallel asset ``parent`` with three branch assets
  (each returns ``partition * k``), joined by summing them; one run per parent (the
  partition is the parent number), started all at once with ``pipeline.run_many(...,
  wait=False)`` (``--submit each``: one ``pipeline.run(..., wait=False)`` per parent) and
  awaited with ``pipeline.wait`` (which polls the store for many runs per read). Postgres
  is the run store and the value store; the joins go through the ``celery`` parallel
  coordinator (flowstone-parallel) when it is installed.
* Celery chords: ``--parents`` chords of three tasks computing the same values plus a
  callback summing them; results in Redis (a chord needs a result backend). The callback
  checks the sum and increments a Redis counter so the bench knows when all joined.

Wall time from the first publish to the last join, as parents/s, after ``--warmup``
untimed parents on each side (so neither side's first connections and first-use costs
are timed). Rounds rotate which side runs first; each ratio is the median of the
per-round ratios. Needs Postgres, Redis and
flowstone-celery + flowstone-io-postgres (+ flowstone-parallel)::

    python bench/parallel.py [--parents 1000] [--concurrency 4] [--repeat 3]
    python bench/parallel.py --quick       # CI smoke: 100 parents, one round

Ends by printing ONE JSON line (figures and the ratio); progress goes to stderr.
This file is also the pipeline module the FlowStone bench worker loads (``pipeline``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _dbos_peer
from _cluster import (
    PG_ADMIN,
    REDIS,
    CpuWindow,
    drop_queue_and_database,
    log,
    pg_admin,
    start_worker,
    stop_worker,
)

import flowstone as fs

sys.path.insert(0, str(Path(__file__).resolve().parent))

COUNTER_ENV = "FLOWSTONE_BENCH_COUNTER"
FACTORS = (1, 2, 3)
WARMUP_KEYS = 10**9  # partitions of the untimed warm-up parents: never a measured one


def expected(parent: int) -> int:
    return sum(parent * k for k in FACTORS)


def _pipeline() -> fs.Pipeline:
    def branch(k: int) -> fs.AssetDef:
        def fn(context: fs.Context) -> int:
            return int(str(context.partition)) * k

        return fs.asset(name=f"branch_{k}")(fn)

    @fs.asset(parallel=fs.Parallel(branches={f"b{k}": f"branch_{k}" for k in FACTORS}))
    def parent(branches: dict[str, int]) -> int:
        return sum(branches.values())

    return fs.Pipeline("bench_parallel", [*(branch(k) for k in FACTORS), parent])


def __getattr__(name: str) -> Any:
    # The worker loads ``parallel.py:pipeline``; build it only then (it reads the env).
    if name == "pipeline":
        globals()["pipeline"] = built = _pipeline()
        return built
    raise AttributeError(name)


# --- chords -----------------------------------------------------------------------------
def _chord_app() -> Any:
    from flowstone_celery import load_settings, make_app

    app = make_app(load_settings())
    # chord results are only needed until the callback ran; let Redis drop them
    app.conf.update(result_backend=REDIS, task_ignore_result=False, result_expires=600)
    return app


def _chord_tasks(app: Any) -> tuple[Any, Any]:
    import redis

    client: list[Any] = []

    @app.task(name="bench.branch", shared=False)  # type: ignore[untyped-decorator]
    def branch(parent: int, k: int) -> int:
        return parent * k

    @app.task(name="bench.join", shared=False)  # type: ignore[untyped-decorator]
    def join(values: list[int], parent: int) -> int:
        if sum(values) != expected(parent):
            raise ValueError(f"parent {parent}: {values}")
        if not client:
            client.append(redis.Redis.from_url(REDIS))
        client[0].incr(os.environ[COUNTER_ENV])
        return sum(values)

    return branch, join


def chord_worker(concurrency: int) -> None:
    app = _chord_app()
    _chord_tasks(app)
    node = f"chord-{os.environ[COUNTER_ENV]}@bench"
    app.worker_main(argv=["worker", "--loglevel=WARNING", f"--concurrency={concurrency}",
                          "--without-mingle", "--without-gossip", "-n", node])


def bench_chords(env: dict[str, str], parents: int, concurrency: int, tmp: Path,
                 warmup: int, cpu: dict[str, Any] | None = None) -> float:
    import redis
    from celery import chord

    r = redis.Redis.from_url(REDIS)
    counter = env[COUNTER_ENV]
    proc = start_worker([sys.executable, __file__, "--chord-worker", "--concurrency",
                   str(concurrency)], env, tmp / "chord.log", f"chord-{counter}@bench")
    app = _chord_app()
    branch, join = _chord_tasks(app)
    def joined(n: int) -> None:
        while int(r.get(counter) or 0) < n:
            if proc.poll() is not None:
                raise RuntimeError("chord worker died:\n" + (tmp / "chord.log").read_text())
            time.sleep(0.005)

    try:
        for i in range(warmup):  # untimed: every child connected, every code path run once
            chord([branch.s(i, k) for k in FACTORS])(join.s(i))
        joined(warmup)
        r.set(counter, 0)
        window = CpuWindow(proc.pid)
        if cpu is not None:
            window.start()
        start = time.perf_counter()
        for i in range(parents):
            chord([branch.s(i, k) for k in FACTORS])(join.s(i))
        joined(parents)
        elapsed = time.perf_counter() - start
        if cpu is not None:
            cpu["chords"] = window.stop(parents)
    finally:
        app.close()
        stop_worker(proc)
        r.delete(counter)
    log(f"celery chords: {parents} parents in {elapsed:.2f}s")
    return parents / elapsed


def bench_flowstone(env: dict[str, str], parents: int, concurrency: int, tmp: Path,
                    offset: int, warmup: int, submit: str,
                    cpu: dict[str, Any] | None = None) -> tuple[float, str]:
    from flowstone.loading import load_pipeline

    spec = f"{Path(__file__).resolve()}:pipeline"
    node = f"fs-{env[COUNTER_ENV]}@bench"
    proc = start_worker([sys.executable, "-m", "flowstone", "worker", "--pipeline", spec,
                   "--concurrency", str(concurrency), "--loglevel", "WARNING",
                   "--hostname", node, "--", "--without-mingle", "--without-gossip"],
                  {**env, "FLOWSTONE_EXECUTOR": "celery"}, tmp / "flowstone.log", node)
    pipeline = load_pipeline(spec)
    try:
        coordinator = str(pipeline.parallel_coordinator.name)
        keys = [str(offset + i) for i in range(parents)]
        def start_runs(partitions: list[str]) -> list[Any]:
            if submit == "bulk":  # all at once: several runs' steps per message
                return pipeline.run_many("parent", partitions, force=True, wait=False)
            return [pipeline.run("parent", k, force=True, wait=False) for k in partitions]

        warm = [str(WARMUP_KEYS + offset + i) for i in range(warmup)]  # untimed, as for chords
        pipeline.wait(start_runs(warm))
        window = CpuWindow(proc.pid)
        if cpu is not None:
            window.start()
        start = time.perf_counter()
        runs = start_runs(keys)
        submitted = time.perf_counter() - start
        for run in pipeline.wait(runs, timeout=900):
            if run.status != "succeeded":
                raise RuntimeError(f"run {run.run_id} ended {run.status}: {run.error}")
        elapsed = time.perf_counter() - start
        if cpu is not None:
            cpu["flowstone"] = {**window.stop(parents), "submitted_s": round(submitted, 3)}
        for k in (keys[0], keys[-1]):  # the same work: spot-check the joined values
            if pipeline.get("parent", k) != expected(int(k)):
                raise RuntimeError(f"parent {k} joined to a wrong value")
    finally:
        pipeline.close()
        stop_worker(proc)
    log(f"flowstone ({coordinator} coordinator): {parents} parents in {elapsed:.2f}s")
    return parents / elapsed, coordinator


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--parents", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of (chords, FlowStone, DBOS), each starting with another "
                             "side; figures are medians over rounds")
    parser.add_argument("--submit", choices=("bulk", "each"), default="bulk",
                        help="FlowStone starts the parents with one run_many (bulk) or one "
                             "run(wait=False) each")
    parser.add_argument("--warmup", type=int, default=20,
                        help="untimed parents each side runs first (connections, imports)")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 100 parents, 1 round")
    parser.add_argument("--cpu", action="store_true",
                        help="also print, per side and round, the CPU a parent cost by kind of "
                             "process and the machine's idle share (Linux /proc)")
    parser.add_argument("--chord-worker", action="store_true", help=argparse.SUPPRESS)
    _dbos_peer.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.parents, args.repeat = 100, 1
    if args.chord_worker:
        chord_worker(args.concurrency)
        return 0

    tag = uuid.uuid4().hex[:8]
    db, queue = f"flowstone_bench_{tag}", f"fs-bench-{tag}"
    pg_admin(f'CREATE DATABASE "{db}"')
    url = "postgresql+asyncpg://" + PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0] + "/" + db
    from flowstone_io_postgres import PostgresRunStore

    store = PostgresRunStore(url, auto_migrate=True)
    store.list_runs(limit=1)
    store.close()
    env = {**os.environ, "FLOWSTONE_DATABASE_URL": url, "FLOWSTONE_BROKER_URL": REDIS,
           "FLOWSTONE_QUEUE": queue, "FLOWSTONE_SWEEPER": "false",
           COUNTER_ENV: f"fs-bench-par-{tag}"}
    os.environ.update({k: env[k] for k in (
        "FLOWSTONE_DATABASE_URL", "FLOWSTONE_BROKER_URL", "FLOWSTONE_QUEUE", COUNTER_ENV)})
    os.environ["FLOWSTONE_EXECUTOR"] = "celery"
    dbos_version = None if args.no_dbos else _dbos_peer.available()
    tuning = _dbos_peer.tuning_from(args)
    if dbos_version is None:
        log("dbos: " + ("skipped (--no-dbos)" if args.no_dbos else
                        "not installed; skipping it (pip install dbos to compare)"))
    rounds: list[dict[str, float]] = []
    cpus: list[dict[str, Any]] = []
    coordinator = ""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_no in range(max(1, args.repeat)):
                got: dict[str, float] = {}

                cpu: dict[str, Any] | None = {} if args.cpu else None

                def chords_side() -> None:
                    got["chords"] = bench_chords(env, args.parents, args.concurrency,
                                                 Path(tmp), args.warmup, cpu)

                def flowstone_side(n: int = round_no) -> None:
                    nonlocal coordinator
                    got["flowstone"], coordinator = bench_flowstone(
                        env, args.parents, args.concurrency, Path(tmp), n * args.parents,
                        args.warmup, args.submit, cpu)

                def dbos_side() -> None:
                    got["dbos"] = _dbos_peer.bench_fan_in(tuning, args.parents, Path(tmp),
                                                          args.warmup)

                sides = [chords_side, flowstone_side]
                if dbos_version is not None:
                    sides.append(dbos_side)
                # rotate which side goes first, so a drift of the machine's speed during
                # a run does not always favour the same side
                shift = round_no % len(sides)
                for side in sides[shift:] + sides[:shift]:
                    side()
                rounds.append(got)
                if cpu is not None:
                    cpus.append(cpu)
                    log(f"round {round_no + 1} CPU ms a parent: {json.dumps(cpu)}")
                log(f"round {round_no + 1}: flowstone/chords = "
                    f"{got['flowstone'] / got['chords']:.3f}"
                    + (f", flowstone/dbos = {got['flowstone'] / got['dbos']:.3f}"
                       if "dbos" in got else ""))
    finally:
        drop_queue_and_database(queue, db)

    def median(key: str) -> float | None:
        if not all(key in r for r in rounds):
            return None
        return round(statistics.median(r[key] for r in rounds), 1)

    def ratio(theirs: str) -> float | None:
        # > 1 means FlowStone joined faster; median of the per-round ratios
        if not all(theirs in r for r in rounds):
            return None
        return round(statistics.median(r["flowstone"] / r[theirs] for r in rounds), 3)

    print(json.dumps({
        "bench": "parallel",
        "parents": args.parents,
        "branches": len(FACTORS),
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "submit": args.submit,
        "rounds": len(rounds),
        "coordinator": coordinator,
        "celery_chords_parents_per_s": median("chords"),
        "flowstone_parents_per_s": median("flowstone"),
        "ratio_flowstone_vs_chords": ratio("chords"),
        "dbos_parents_per_s": median("dbos"),
        "ratio_flowstone_vs_dbos": ratio("dbos"),
        "dbos": _dbos_peer.describe(tuning) if dbos_version is not None else None,
        **({"cpu_ms_per_parent": cpus} if args.cpu else {}),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
