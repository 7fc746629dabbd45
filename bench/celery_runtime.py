"""Celery runtime throughput: raw Celery no-op tasks vs FlowStone assets on the same worker.

One run, same worker settings for everything (one worker process, prefork pool,
``--concurrency`` children, the FlowStone Celery app configuration: JSON only, late acks):

* raw Celery: ``--tasks`` no-op tasks published in a loop on one producer; each task only
  increments a Redis counter so the bench knows when all ran;
* FlowStone: a pipeline of ``--independent`` trivial independent assets, and a chain
  ``--chain`` assets deep, each run with ``force=True`` until the run settles.

Needs Postgres, Redis and the two plugins installed::

    python bench/celery_runtime.py [--concurrency 4] [--tasks 2000] [--repeat 3]
    python bench/celery_runtime.py --quick      # CI smoke: 500 tasks/assets, one round

Ends by printing ONE JSON line (the figures); progress goes to stderr.
This file is also the pipeline module the bench worker loads (``independent``, ``chain``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _cluster import (
    PG_ADMIN,
    REDIS,
    drop_queue_and_database,
    log,
    pg_admin,
    start_worker,
    stop_worker,
)

import flowstone as fs

COUNTER_ENV = "FLOWSTONE_BENCH_COUNTER"


def _independent_assets(n: int) -> list[Any]:
    def make(i: int) -> Any:
        def fn() -> int:
            return i

        return fs.asset(name=f"a{i:05d}")(fn)

    return [make(i) for i in range(n)]


def _chain_assets(n: int) -> list[Any]:
    assets = [fs.asset(name="c00000")(lambda: 0)]
    for i in range(1, n):
        def fn(**kw: int) -> int:
            return next(iter(kw.values())) + 1

        assets.append(fs.asset(name=f"c{i:05d}", deps=[f"c{i - 1:05d}"])(fn))
    return assets


def _pipelines() -> tuple[fs.Pipeline, fs.Pipeline]:
    n_ind = int(os.environ.get("FLOWSTONE_BENCH_INDEPENDENT", "2000"))
    n_chain = int(os.environ.get("FLOWSTONE_BENCH_CHAIN", "200"))
    return (fs.Pipeline("bench_independent", _independent_assets(n_ind)),
            fs.Pipeline("bench_chain", _chain_assets(n_chain)))


def __getattr__(name: str) -> Any:
    # The worker loads ``celery_runtime.py:independent`` / ``:chain``; build them only then.
    if name in ("independent", "chain"):
        ind, chain = _pipelines()
        globals().update(independent=ind, chain=chain)
        return globals()[name]
    raise AttributeError(name)


# --- raw Celery worker ------------------------------------------------------------------
def raw_worker(concurrency: int) -> None:
    """A worker on the FlowStone app configuration with one extra no-op task."""
    import redis

    from flowstone_celery import load_settings, make_app

    app = make_app(load_settings())
    counter = os.environ[COUNTER_ENV]
    client: list[Any] = []

    @app.task(name="bench.noop", shared=False, ignore_result=True)  # type: ignore[untyped-decorator]
    def noop() -> None:
        if not client:
            client.append(redis.Redis.from_url(REDIS))
        client[0].incr(counter)

    app.worker_main(argv=["worker", "--loglevel=WARNING", f"--concurrency={concurrency}",
                          "--without-mingle", "--without-gossip", "-n", f"raw-{counter}@bench"])


# --- orchestration ------------------------------------------------------------------------
def bench_raw(env: dict[str, str], n: int, concurrency: int, tmp: Path) -> float:
    import redis

    from flowstone_celery import load_settings, make_app

    r = redis.Redis.from_url(REDIS)
    counter = env[COUNTER_ENV]
    cmd = [sys.executable, __file__, "--raw-worker", "--concurrency", str(concurrency)]
    proc = start_worker(cmd, env, tmp / "raw.log", f"raw-{counter}@bench")
    try:
        app = make_app(load_settings(broker_url=env["FLOWSTONE_BROKER_URL"],
                                     queue=env["FLOWSTONE_QUEUE"]))
        start = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                app.send_task("bench.noop", queue=env["FLOWSTONE_QUEUE"], producer=producer,
                              ignore_result=True, add_to_parent=False)
        while int(r.get(counter) or 0) < n:
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        app.close()
    finally:
        stop_worker(proc)
        r.delete(counter)
    return n / elapsed


def bench_flowstone(env: dict[str, str], concurrency: int, tmp: Path) -> tuple[float, float]:
    from flowstone.loading import load_pipeline

    spec = str(Path(__file__).resolve())
    proc = start_worker([sys.executable, "-m", "flowstone", "worker",
                   "--pipeline", f"{spec}:independent", "--pipeline", f"{spec}:chain",
                   "--concurrency", str(concurrency), "--loglevel", "WARNING",
                   "--hostname", f"fs-{env[COUNTER_ENV]}@bench",
                   "--", "--without-mingle", "--without-gossip"],
                  {**env, "FLOWSTONE_EXECUTOR": "celery"}, tmp / "flowstone.log",
                  f"fs-{env[COUNTER_ENV]}@bench")
    rates = []
    try:
        for name, attr in (("independent", "independent"), ("chain", "chain")):
            pipeline = load_pipeline(f"{spec}:{attr}")
            n = len(pipeline.dag.order)
            start = time.perf_counter()
            result = pipeline.run(force=True, timeout=600)
            elapsed = time.perf_counter() - start
            if result.status != "succeeded":
                raise RuntimeError(f"{name} run {result.run_id} ended {result.status}")
            log(f"flowstone {name}: {n} assets in {elapsed:.2f}s")
            rates.append(n / elapsed)
            pipeline.close()
    finally:
        stop_worker(proc)
    return rates[0], rates[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--independent", type=int, default=2000)
    parser.add_argument("--chain", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of (raw, FlowStone); figures are medians over rounds")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: 500 tasks, 500 independent assets, chain of 50, 1 round")
    parser.add_argument("--raw-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.independent, args.chain, args.repeat = 500, 500, 50, 1
    if args.raw_worker:
        raw_worker(args.concurrency)
        return 0

    import tempfile

    tag = uuid.uuid4().hex[:8]
    db = f"flowstone_bench_{tag}"
    queue = f"fs-bench-{tag}"
    pg_admin(f'CREATE DATABASE "{db}"')
    url = "postgresql+asyncpg://" + PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0] + "/" + db
    from flowstone_io_postgres import PostgresRunStore

    store = PostgresRunStore(url, auto_migrate=True)
    store.list_runs(limit=1)
    store.close()
    env = {**os.environ, "FLOWSTONE_DATABASE_URL": url, "FLOWSTONE_BROKER_URL": REDIS,
           "FLOWSTONE_QUEUE": queue, "FLOWSTONE_SWEEPER": "false",
           "FLOWSTONE_BENCH_INDEPENDENT": str(args.independent),
           "FLOWSTONE_BENCH_CHAIN": str(args.chain), COUNTER_ENV: f"fs-bench-count-{tag}"}
    os.environ.update({k: env[k] for k in (
        "FLOWSTONE_DATABASE_URL", "FLOWSTONE_BROKER_URL", "FLOWSTONE_QUEUE",
        "FLOWSTONE_BENCH_INDEPENDENT", "FLOWSTONE_BENCH_CHAIN")})
    os.environ["FLOWSTONE_EXECUTOR"] = "celery"
    rounds: list[tuple[float, float, float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_no in range(1, max(1, args.repeat) + 1):
                raw = bench_raw(env, args.tasks, args.concurrency, Path(tmp))
                log(f"round {round_no}: raw celery: {raw:.0f} tasks/s")
                independent, chain = bench_flowstone(env, args.concurrency, Path(tmp))
                rounds.append((raw, independent, chain))
                log(f"round {round_no}: ratio independent/raw = {independent / raw:.3f}")
    finally:
        drop_queue_and_database(queue, db)
    raw, independent, chain = (statistics.median(r[i] for r in rounds) for i in range(3))
    print(json.dumps({
        "bench": "celery_runtime",
        "concurrency": args.concurrency,
        "rounds": len(rounds),
        "raw_celery_tasks_per_s": round(raw, 1),
        "flowstone_independent_assets_per_s": round(independent, 1),
        "flowstone_chain_assets_per_s": round(chain, 1),
        # median of the per-round ratios: each compares figures measured side by side
        "ratio_independent": round(statistics.median(r[1] / r[0] for r in rounds), 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
