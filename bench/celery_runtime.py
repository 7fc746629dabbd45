"""Celery runtime throughput: raw Celery no-op tasks vs FlowStone assets on the same worker.

One run, same worker settings for everything (one worker process, prefork pool,
``--concurrency`` children, the FlowStone Celery app configuration: JSON only, late acks):

* raw Celery: ``--tasks`` no-op tasks published in a loop on one producer; each task only
  increments a Redis counter so the bench knows when all ran;
* FlowStone: a pipeline of ``--independent`` trivial independent assets, and a chain
  ``--chain`` assets deep, each run with ``force=True`` until the run settles;
* DBOS Transact (when the ``dbos`` package is installed; ``--no-dbos`` skips it):
  ``--independent`` one-step workflows on a DBOS queue, and one workflow of ``--chain``
  steps run from the queue, on worker processes of their own and a database of their
  own on the same Postgres server (see ``_dbos_peer.py`` and its ``--dbos-*`` tuning).

Every side starts its workers fresh each round and gets an untimed warm-up first, so no
side's first connections and first-use costs are timed (raw Celery: ``WARMUP`` no-op
tasks; FlowStone: a run of the first ``WARMUP`` independent assets and of the chain's
first two; DBOS: ``WARMUP`` workflows and a two-step chain, see ``_dbos_peer.py``).
Rounds rotate which side goes first; the figures are medians over the rounds and each
ratio is the median of the per-round ratios.

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
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _dbos_peer
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
WARMUP = 64  # untimed work each side does first: every pool process's connections, once


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

        def send(count: int) -> None:
            with app.producer_or_acquire() as producer:
                for _ in range(count):
                    app.send_task("bench.noop", queue=env["FLOWSTONE_QUEUE"],
                                  producer=producer, ignore_result=True, add_to_parent=False)

        send(WARMUP)  # untimed, as for the other sides
        while int(r.get(counter) or 0) < WARMUP:
            time.sleep(0.005)
        start = time.perf_counter()
        send(n)
        while int(r.get(counter) or 0) < WARMUP + n:
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
            warm = pipeline.dag.order[: WARMUP if name == "independent" else 2]
            if pipeline.run(warm, force=True, timeout=600).status != "succeeded":  # untimed
                raise RuntimeError(f"{name}: the warm-up run did not succeed")
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
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of (raw, FlowStone, DBOS), each starting with another "
                             "side; figures are medians over rounds")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: 500 tasks, 500 independent assets, chain of 50, 1 round")
    parser.add_argument("--raw-worker", action="store_true", help=argparse.SUPPRESS)
    _dbos_peer.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.independent, args.chain, args.repeat = 500, 500, 50, 1
    if args.raw_worker:
        raw_worker(args.concurrency)
        return 0

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
    dbos_version = None if args.no_dbos else _dbos_peer.available()
    tuning = _dbos_peer.tuning_from(args)
    if dbos_version is None:
        log("dbos: " + ("skipped (--no-dbos)" if args.no_dbos else
                        "not installed; skipping it (pip install dbos to compare)"))
    rounds: list[dict[str, float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_no in range(max(1, args.repeat)):
                got: dict[str, float] = {}

                def raw_side() -> None:
                    got["raw"] = bench_raw(env, args.tasks, args.concurrency, Path(tmp))

                def flowstone_side() -> None:
                    got["independent"], got["chain"] = bench_flowstone(
                        env, args.concurrency, Path(tmp))

                def dbos_side() -> None:
                    got["dbos_independent"], got["dbos_chain"] = _dbos_peer.bench_runtime(
                        tuning, args.independent, args.chain, Path(tmp))

                sides = [raw_side, flowstone_side]
                if dbos_version is not None:
                    sides.append(dbos_side)
                # rotate which side goes first, so a drift of the machine's speed during
                # a run does not always favour the same side
                shift = round_no % len(sides)
                for side in sides[shift:] + sides[:shift]:
                    side()
                rounds.append(got)
                log(f"round {round_no + 1}: raw celery {got['raw']:.0f} tasks/s; "
                    f"ratio independent/raw = {got['independent'] / got['raw']:.3f}"
                    + (f"; independent/dbos = {got['independent'] / got['dbos_independent']:.3f}"
                       f", chain/dbos = {got['chain'] / got['dbos_chain']:.3f}"
                       if dbos_version is not None else ""))
    finally:
        drop_queue_and_database(queue, db)

    def median(key: str) -> float | None:
        if not all(key in r for r in rounds):
            return None
        return round(statistics.median(r[key] for r in rounds), 1)

    def ratio(ours: str, theirs: str) -> float | None:
        # median of the per-round ratios: each compares figures measured side by side
        if not all(theirs in r for r in rounds):
            return None
        return round(statistics.median(r[ours] / r[theirs] for r in rounds), 3)

    print(json.dumps({
        "bench": "celery_runtime",
        "concurrency": args.concurrency,
        "rounds": len(rounds),
        "raw_celery_tasks_per_s": median("raw"),
        "flowstone_independent_assets_per_s": median("independent"),
        "flowstone_chain_assets_per_s": median("chain"),
        "ratio_independent": ratio("independent", "raw"),
        "dbos_independent_workflows_per_s": median("dbos_independent"),
        "dbos_chain_steps_per_s": median("dbos_chain"),
        "ratio_independent_vs_dbos": ratio("independent", "dbos_independent"),
        "ratio_chain_vs_dbos": ratio("chain", "dbos_chain"),
        "dbos": _dbos_peer.describe(tuning) if dbos_version is not None else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
