"""Scatter throughput: raw Celery no-op tasks and a 10k chord vs FlowStone scatter.

One run, same worker settings for everything (one worker process, prefork pool,
``--concurrency`` children, the FlowStone Celery app configuration):

* raw Celery: no-op tasks published in a loop on one producer (each increments a Redis
  counter so the bench knows when all ran);
* a Celery chord of 10,000 no-op tasks (Redis result backend), timed to its callback;
* FlowStone scatter of 10,000 and 100,000 items, unbatched and batched (100 per batch),
  each timed from ``pipeline.run`` to the gathered value;
* reader scatter throughput and memory: items/s, and the peak RSS of a fresh worker's
  processes (their sum, and the largest single process) while a reader scatter of 100k
  and then 1M items streams through (flat means it does not grow with the count).

Needs Postgres, Redis, flowstone-celery, flowstone-io-postgres and flowstone-scatter::

    python bench/scatter.py [--concurrency 4]
    python bench/scatter.py --quick      # smoke: 2k/10k items, 20k/100k reader items

Ends by printing ONE JSON line (figures and ratios); progress goes to stderr. This file is
also the pipeline module the bench worker loads (``pipeline``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
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
PROFILE_ENV = "FLOWSTONE_BENCH_PROFILE"
PROFILE_EVERY = 2.0


def profile_children(directory: str) -> None:
    """cProfile every pool child of the worker that imports this module; each writes
    ``DIRECTORY/<pid>.prof`` (cumulative) at most every ``PROFILE_EVERY`` seconds after a
    task, so a worker stopped at any time leaves its stats of all but the last seconds."""
    import cProfile

    from celery import signals

    state: dict[str, Any] = {}

    def start(**_: Any) -> None:
        state["prof"] = cProfile.Profile()
        state["at"] = time.monotonic()
        state["prof"].enable()

    def dump(**_: Any) -> None:
        prof = state.get("prof")
        if prof is None or time.monotonic() - state["at"] < PROFILE_EVERY:
            return
        prof.disable()
        prof.dump_stats(os.path.join(directory, f"{os.getpid()}.prof"))
        state["at"] = time.monotonic()
        prof.enable()

    signals.worker_process_init.connect(start, weak=False)
    signals.task_postrun.connect(dump, weak=False)


if os.environ.get(PROFILE_ENV):  # the bench worker of `--profile DIR`
    profile_children(os.environ[PROFILE_ENV])


# --- the FlowStone pipeline the bench worker serves ----------------------------------------
@fs.asset
def count(context: fs.Context) -> int:
    return int(str(context.partition).split("-")[0])


@fs.asset(scatter=fs.Scatter(items=lambda count: range(count), max_concurrent=2000,
                             gather=len))
def unbatched(context: fs.Context, count: int) -> None:
    return None


@fs.asset(scatter=fs.Scatter(items=lambda count: range(count), max_concurrent=40,
                             batching=fs.Batching(max_items=100), gather=len))
def batched(context: fs.Context, count: int) -> list[None]:
    assert context.batch is not None
    return [None] * len(context.batch.items)


@fs.asset(scatter=fs.Scatter(reader=fs.readers.Iterable(lambda deps: range(deps["count"])),
                             max_concurrent=40, page_size=5000,
                             batching=fs.Batching(max_items=1000), gather=len))
def streamed(context: fs.Context, count: int) -> list[None]:
    assert context.batch is not None
    return [None] * len(context.batch.items)


pipeline = fs.Pipeline("bench_scatter", [count, unbatched, batched, streamed])


# --- raw Celery worker ------------------------------------------------------------------
def _raw_app() -> Any:
    from flowstone_celery import load_settings, make_app

    app = make_app(load_settings())
    app.conf.update(result_backend=REDIS, task_ignore_result=False)
    return app


def raw_worker(concurrency: int) -> None:
    import redis

    app = _raw_app()
    counter = os.environ[COUNTER_ENV]
    client: list[Any] = []

    def incr() -> None:
        if not client:
            client.append(redis.Redis.from_url(REDIS))
        client[0].incr(counter)

    @app.task(name="bench.noop", shared=False, ignore_result=True)  # type: ignore[untyped-decorator]
    def noop() -> None:
        incr()

    @app.task(name="bench.member", shared=False)  # type: ignore[untyped-decorator]
    def member() -> None:
        return None

    @app.task(name="bench.done", shared=False)  # type: ignore[untyped-decorator]
    def done(results: list[Any]) -> None:
        incr()

    app.worker_main(argv=["worker", "--loglevel=WARNING", f"--concurrency={concurrency}",
                          "--without-mingle", "--without-gossip", "-n", f"raw-{counter}@bench"])


# --- orchestration ------------------------------------------------------------------------
def _tree_peak_rss_mb(pid: int) -> tuple[float, float]:
    """Peak RSS (VmHWM) of ``pid`` and its children, in MiB: (their sum, the largest one
    process reached)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    peaks = []
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
    return sum(peaks), max(peaks, default=0.0)


def bench_raw(env: dict[str, str], n: int, chord_n: int, concurrency: int,
              tmp: Path) -> tuple[float, float]:
    import redis
    from celery import chord

    r = redis.Redis.from_url(REDIS)
    counter = env[COUNTER_ENV]
    cmd = [sys.executable, __file__, "--raw-worker", "--concurrency", str(concurrency)]
    proc = start_worker(cmd, env, tmp / "raw.log", f"raw-{counter}@bench")
    try:
        app = _raw_app()
        queue = env["FLOWSTONE_QUEUE"]
        start = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                app.send_task("bench.noop", queue=queue, producer=producer,
                              ignore_result=True, add_to_parent=False)
        while int(r.get(counter) or 0) < n:
            time.sleep(0.005)
        raw = n / (time.perf_counter() - start)
        log(f"raw celery: {raw:.0f} tasks/s")
        start = time.perf_counter()
        members = [app.signature("bench.member", queue=queue) for _ in range(chord_n)]
        chord(members)(app.signature("bench.done", queue=queue))
        while int(r.get(counter) or 0) < n + 1:
            time.sleep(0.01)
        chord_s = time.perf_counter() - start
        log(f"chord of {chord_n}: {chord_s:.2f}s")
        app.close()
    finally:
        stop_worker(proc)
        r.delete(counter)
    return raw, chord_s


def _fs_worker(env: dict[str, str], concurrency: int, tmp: Path, name: str) -> Any:
    node = f"fs-{name}-{env[COUNTER_ENV]}@bench"
    if env.get(PROFILE_ENV):
        phase = Path(env[PROFILE_ENV]) / name
        phase.mkdir(parents=True, exist_ok=True)
        env = {**env, PROFILE_ENV: str(phase)}
    return start_worker([sys.executable, "-m", "flowstone", "worker", "--pipeline",
                   f"{Path(__file__).resolve()}:pipeline", "--concurrency", str(concurrency),
                   "--loglevel", "WARNING", "--hostname", node, "--", "--without-mingle",
                   "--without-gossip"], {**env, "FLOWSTONE_EXECUTOR": "celery"},
                  tmp / f"{name}.log", node)


def _run(p: Any, asset: str, n: int) -> float:
    start = time.perf_counter()
    result = p.run(asset, partition=f"{n}-{uuid.uuid4().hex[:6]}", timeout=3600)
    elapsed = time.perf_counter() - start
    if result.status != "succeeded" or result.value != n:
        raise RuntimeError(f"{asset} run {result.run_id} ended {result.status}: {result.error}")
    log(f"flowstone {asset} {n}: {elapsed:.2f}s ({n / elapsed:.0f} items/s)")
    return elapsed


def _only(which: str, p: Any, env: dict[str, str], concurrency: int, tmp: Path,
          large: int, reader_large: int) -> int:
    """``--only``: one worker, one warm-up, one timed scatter; prints its JSON line."""
    asset, n = ("unbatched", large) if which == "unbatched" else ("streamed", reader_large)
    proc = _fs_worker(env, concurrency, tmp, which)
    try:
        _run(p, asset, 500)
        elapsed = _run(p, asset, n)
        total, largest = _tree_peak_rss_mb(proc.pid)
    finally:
        stop_worker(proc)
        p.close()
    print(json.dumps({"bench": "scatter", "only": which, "concurrency": concurrency,
                      "items": n, "items_per_s": round(n / elapsed, 1),
                      "peak_rss_mb": round(total, 1), "process_peak_rss_mb": round(largest, 1)}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    parser.add_argument("--profile", metavar="DIR",
                        help="cProfile the FlowStone workers' pool children into "
                        "DIR/<phase>/<pid>.prof (the figures then include the profiler)")
    parser.add_argument("--only", choices=("unbatched", "reader"),
                        help="run only this scatter (no raw Celery, no chord): for profiles")
    parser.add_argument("--raw-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_worker:
        raw_worker(args.concurrency)
        return 0
    small, large = (2_000, 10_000) if args.quick else (10_000, 100_000)
    reader_small, reader_large = (20_000, 100_000) if args.quick else (100_000, 1_000_000)
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
           COUNTER_ENV: f"fs-bench-count-{tag}"}
    if args.profile:
        env[PROFILE_ENV] = str(Path(args.profile).resolve())
    os.environ.update({k: env[k] for k in ("FLOWSTONE_DATABASE_URL", "FLOWSTONE_BROKER_URL",
                                           "FLOWSTONE_QUEUE")})
    os.environ["FLOWSTONE_EXECUTOR"] = "celery"
    out: dict[str, Any] = {"bench": "scatter", "concurrency": args.concurrency,
                           "quick": args.quick}
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            from flowstone.loading import load_pipeline

            p = load_pipeline(f"{Path(__file__).resolve()}:pipeline")
            if args.only is not None:
                return _only(args.only, p, env, args.concurrency, tmp, large, reader_large)
            raw, chord_s = bench_raw(env, small, 10_000, args.concurrency, tmp)
            proc = _fs_worker(env, args.concurrency, tmp, "items")
            try:
                _run(p, "unbatched", 500)  # warm-up: schema, pools, imports
                t10k = _run(p, "unbatched", 10_000)
                t_small = t10k if small == 10_000 else _run(p, "unbatched", small)
                t_large = _run(p, "unbatched", large)
                b_small = _run(p, "batched", small)
                b_large = _run(p, "batched", large)
            finally:
                stop_worker(proc)
            rss, per_process, reader_s = [], [], []
            for n in (reader_small, reader_large):
                proc = _fs_worker(env, args.concurrency, tmp, f"reader{n}")
                try:
                    reader_s.append(_run(p, "streamed", n))
                    total, largest = _tree_peak_rss_mb(proc.pid)
                    rss.append(total)
                    per_process.append(largest)
                    log(f"reader {n}: {n / reader_s[-1]:.0f} items/s, worker peak RSS "
                        f"{total:.0f} MiB in all, {largest:.0f} MiB the largest process")
                finally:
                    stop_worker(proc)
            p.close()
    finally:
        drop_queue_and_database(queue, db)
    unb = large / t_large
    bat = large / b_large
    out.update({
        "raw_celery_tasks_per_s": round(raw, 1),
        "chord_10k_s": round(chord_s, 2),
        "scatter_10k_unbatched_s": round(t10k, 2),
        f"scatter_{small}_unbatched_items_per_s": round(small / t_small, 1),
        f"scatter_{large}_unbatched_items_per_s": round(unb, 1),
        f"scatter_{small}_batched_items_per_s": round(small / b_small, 1),
        f"scatter_{large}_batched_items_per_s": round(bat, 1),
        f"reader_{reader_small}_items_per_s": round(reader_small / reader_s[0], 1),
        f"reader_{reader_large}_items_per_s": round(reader_large / reader_s[1], 1),
        f"reader_{reader_small}_peak_rss_mb": round(rss[0], 1),
        f"reader_{reader_large}_peak_rss_mb": round(rss[1], 1),
        f"reader_{reader_small}_process_peak_rss_mb": round(per_process[0], 1),
        f"reader_{reader_large}_process_peak_rss_mb": round(per_process[1], 1),
        "ratio_unbatched_vs_raw": round(unb / raw, 2),
        "ratio_batched_vs_raw": round(bat / raw, 2),
        "ratio_chord_vs_scatter_10k": round(chord_s / t10k, 2),
        "ratio_rss_large_vs_small": round(rss[1] / rss[0], 2),
    })
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
