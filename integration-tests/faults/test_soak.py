"""Soak: many concurrent partitioned runs and a large scatter on two workers, in two
halves of the same work. No run is left non-terminal, and the workers' resident memory
does not grow from the first half to the second.

Sizes (environment): FLOWSTONE_FAULTS_SOAK_RUNS runs per half (default 500),
FLOWSTONE_FAULTS_SOAK_ITEMS scatter items per half (default 50000): the issue's 500
concurrent runs and 100,000 items, in two halves.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from faults_it import HERE, TERMINAL, Workers, env_int, group_rss_kib, sql

pytestmark = pytest.mark.integration

SOAK_SPEC = f"{HERE / 'pipelines' / 'fault_soak.py'}:pipeline"
RUNS = env_int("FLOWSTONE_FAULTS_SOAK_RUNS", 500)
ITEMS = env_int("FLOWSTONE_FAULTS_SOAK_ITEMS", 50_000)
# Allowed growth of the peak RSS from the first half to the second: allocator noise, not a
# leak (a leak of one object per step or item would show as megabytes per half).
SLACK = 1.10


class RssSampler:
    """Samples the summed RSS of the workers' process groups every 0.5 s."""

    def __init__(self, workers: Workers) -> None:
        self.pgids = [p.pid for p in workers.by_name.values()]
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append(sum(group_rss_kib(g) for g in self.pgids))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def soak_half(pipeline: Any, tag: str, runs: int, items: int) -> list[Any]:
    """One half: ``runs`` chain runs and one scatter of ``items`` items, all at once."""
    chains = pipeline.run_many("report", [f"{tag}-{i}" for i in range(runs)], wait=False)
    scatter = pipeline.run("big", f"big{tag}-{items}", wait=False)
    return pipeline.wait([*chains, scatter], timeout=600)


def test_soak_no_run_left_behind_and_no_memory_growth(queue: str, workers: Workers,
                                                      database_url: str,
                                                      state_dir: Path) -> None:
    from fault_soak import make_pipeline

    pipeline = make_pipeline()
    workers.specs = [SOAK_SPEC]
    workers.start_many("w1", "w2")
    run = uuid.uuid4().hex[:6]
    try:
        started = time.monotonic()
        soak_half(pipeline, f"warm{run}", max(1, RUNS // 10), max(1, ITEMS // 10))
        halves = []
        for half in ("a", "b"):
            with RssSampler(workers) as rss:
                results = soak_half(pipeline, f"{half}{run}", RUNS, ITEMS)
            halves.append(max(rss.samples))
            assert {r.status for r in results} == {"succeeded"}, [
                (r.run_id, r.status, r.error) for r in results if r.status != "succeeded"][:5]
            assert results[-1].value == [i % 7 for i in range(ITEMS)]  # the scatter, gathered
        elapsed = time.monotonic() - started
    finally:
        pipeline.close()
    left = sql(database_url, "SELECT count(*) FROM flowstone.runs WHERE status <> ALL($1)",
               list(TERMINAL))[0][0]
    assert left == 0, f"{left} runs left non-terminal"
    first, second = halves
    print(f"soak: 2 x ({RUNS} runs + {ITEMS} items) in {elapsed:.0f} s; worker RSS peak "
          f"{first / 1024:.0f} MiB (first half), {second / 1024:.0f} MiB (second half)")
    assert second <= first * SLACK, (
        f"worker RSS grew from {first} KiB to {second} KiB between the halves")
