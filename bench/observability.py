"""Observer overhead: the 500-asset in-process benchmark with and without observability.

The DAG and the pipeline are ``bench/inprocess.py``'s (SQLite store, filesystem values,
thread-pool executor). Five pipelines on the same DAG, each in its own directory, run in
alternating rounds in the same process (so a burst of load from elsewhere hits all):

* ``off``: no observer;
* ``off2``: no observer either: the control, whose difference from ``off`` is the noise
  floor of this invocation;
* ``noop``: an observer that does nothing (what the engine's event building costs any
  observer, so the plugin's own share can be told apart);
* ``prometheus``: ``PrometheusObserver`` (what ``--metrics-port`` attaches) and the JSON-log
  step context;
* ``lineage``: the above plus ``OpenLineageObserver`` writing JSON lines to a file from
  its background thread (the measured time includes waiting until all are written).

Medians of the wall time per run, less the plain function calls, per asset; the overhead
percentages are medians of the per-round ratios to ``off`` (each compares runs measured
side by side), of the whole run's wall time and of the process's CPU time. Two figures
this shared machine's noise does not blur: the CPU spent inside ``Emitter.emit`` (building
the events and running the observers) and inside the observers, timed within real runs
of the ``prometheus`` configuration (``in_run_*``); and the observers' own CPU per asset
measured alone (the events one asset produces, fed directly and recorded). The last line printed is
one JSON object::

    {"bench": "observability", "assets": 500, "off_us_per_asset": 3100.0,
     "prometheus_us_per_asset": 3150.0, "prometheus_overhead_pct": 1.6, ...}

Usage::

    python bench/observability.py            # 7 rounds
    python bench/observability.py --quick    # CI smoke: 1 round
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inprocess import (
    build_shape,
    check_flowstone,
    direct_seconds,
    expected_values,
    make_function,
    measure,
    run_flowstone,
    us_per_asset,
)
from prometheus_client import CollectorRegistry

import flowstone as fs
from flowstone_observability import OpenLineageObserver, PrometheusObserver, StepLogContext
from flowstone_observability.lineage import file_transport


class Noop:
    """An observer that ignores every event."""

    def on_event(self, event: object) -> None:
        return None


def pipeline(nodes: list, home: Path, observers: list) -> fs.Pipeline:
    assets = [fs.asset(make_function(n)) for n in nodes]
    return fs.Pipeline("bench_observability", assets,
                       store=f"sqlite:///{home / 'flowstone.db'}", observers=observers)


def observer_us_per_asset(rounds: int = 20_000) -> float:
    """The observers' own CPU per asset, fed directly the events one asset produces
    (started, loaded, stored, lineage, succeeded): no engine, no noise from the run."""
    from flowstone.events import Event

    prometheus = PrometheusObserver(CollectorRegistry())
    observers = [prometheus, StepLogContext()]
    events = [
        Event("asset.started", "p", "r", "a", "", {"attempt": 1}),
        Event("io.loaded", "p", "r", "a", "", {"io_manager": "default", "count": 2}),
        Event("io.stored", "p", "r", "a", "", {"io_manager": "default"}),
        Event("lineage.recorded", "p", "r", "a", "", {"upstream": ["m1", "m2"]}),
        Event("asset.succeeded", "p", "r", "a", "", {"duration_s": 0.001}),
    ]
    started = time.process_time()
    for _ in range(rounds):
        for event in events:
            for observer in observers:
                observer.on_event(event)
    prometheus.flush()  # what is still buffered is recorded inside the measured time
    return round((time.process_time() - started) / rounds * 1e6, 2)


class Timed:
    """Forwards events to ``inner`` and adds up the time spent in it (this thread's
    clock: the engine's step threads each time their own calls)."""

    def __init__(self, inner: Any, clock: list[Any]) -> None:
        self.inner, self.clock = inner, clock
        self.event_kinds = getattr(inner, "event_kinds", None)

    def on_event(self, event: object) -> None:
        started = time.thread_time()
        self.inner.on_event(event)
        self.clock[0] += time.thread_time() - started
        self.clock[1] += 1


def timer_cost(pairs: int = 100_000) -> float:
    """Seconds one pair of ``time.thread_time()`` calls costs (a system call here, about as
    much as the work timed): subtracted per timed call."""
    started = time.thread_time()
    for _ in range(pairs):
        time.thread_time()
        time.thread_time()
    return (time.thread_time() - started) / pairs


def in_run_us_per_asset(nodes: list, home: Path, runs: int) -> tuple[float, float]:
    """Inside real runs of the ``prometheus`` configuration, the CPU per asset spent (a) in
    the observers and (b) in ``Emitter.emit`` as a whole (building the events and calling
    the observers): what the end-to-end difference measures, without the run-to-run noise
    of a shared machine. CPU time of the calling thread, summed over the step threads, in
    two passes (so neither timer runs inside the other), less the timers' own cost; the
    last flush of the buffer (observer work done after the runs) is added to both."""
    from flowstone.events import Emitter

    def flushed(prometheus: PrometheusObserver) -> float:
        started = time.thread_time()
        prometheus.flush()
        return time.thread_time() - started

    per_pair = timer_cost()
    # pass (a): the observers, each call timed
    in_observers = [0.0, 0]
    prometheus = PrometheusObserver(CollectorRegistry())
    p = pipeline(nodes, home / "observers", [Timed(prometheus, in_observers),
                                             Timed(StepLogContext(), in_observers)])
    run_flowstone(p)  # warm-up
    prometheus.flush()
    in_observers[:] = [0.0, 0]
    for _ in range(runs):
        run_flowstone(p)
    observers = in_observers[0] - in_observers[1] * per_pair + flushed(prometheus)
    p.close()

    # pass (b): Emitter.emit, each call timed
    in_emit = [0.0, 0]
    prometheus = PrometheusObserver(CollectorRegistry())
    p = pipeline(nodes, home / "emit", [prometheus, StepLogContext()])
    original = Emitter.emit

    def timed_emit(self: Emitter, *args: Any, **kwargs: Any) -> str | None:
        started = time.thread_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            in_emit[0] += time.thread_time() - started
            in_emit[1] += 1

    run_flowstone(p)  # warm-up
    prometheus.flush()
    Emitter.emit = timed_emit  # type: ignore[method-assign]
    try:
        for _ in range(runs):
            run_flowstone(p)
    finally:
        Emitter.emit = original  # type: ignore[method-assign]
    emitting = in_emit[0] - in_emit[1] * per_pair + flushed(prometheus)
    p.close()
    per = len(nodes) * runs
    return round(observers / per * 1e6, 2), round(emitting / per * 1e6, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7, help="measured rounds")
    parser.add_argument("--quick", action="store_true", help="one measured round")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    logging.getLogger("flowstone").setLevel(logging.WARNING)
    nodes = build_shape(args.layers, args.width)
    expected = expected_values(nodes)
    with tempfile.TemporaryDirectory(prefix="fs-bench-obs-") as tmp:
        root = Path(tmp)
        homes = {name: root / name for name in ("off", "off2", "noop", "prometheus", "lineage")}
        for home in homes.values():
            home.mkdir()
        lineage = OpenLineageObserver(file_transport(root / "lineage.jsonl"),
                                      registry=CollectorRegistry())
        pipelines = {
            "off": pipeline(nodes, homes["off"], []),
            "off2": pipeline(nodes, homes["off2"], []),
            "noop": pipeline(nodes, homes["noop"], [Noop()]),
            "prometheus": pipeline(nodes, homes["prometheus"],
                                   [PrometheusObserver(CollectorRegistry()), StepLogContext()]),
            "lineage": pipeline(nodes, homes["lineage"],
                                [PrometheusObserver(CollectorRegistry()), StepLogContext(),
                                 lineage]),
        }
        runners = {name: (lambda p=p: run_flowstone(p)) for name, p in pipelines.items()}

        def lineage_run() -> None:
            # the export finishes inside the measured time (and does not overlap the next
            # configuration's run)
            run_flowstone(pipelines["lineage"])
            lineage.flush(120)

        runners["lineage"] = lineage_run
        samples = measure(runners, repeat)
        lineage.flush(120)
        for p in pipelines.values():
            check_flowstone(p, expected)
        baseline = direct_seconds(nodes)
        lines = sum(1 for _ in (root / "lineage.jsonl").open())
        for p in pipelines.values():
            p.close()
        lineage.close()
        (root / "timed" / "observers").mkdir(parents=True)
        (root / "timed" / "emit").mkdir()
        observers_in_run, emit_in_run = in_run_us_per_asset(
            nodes, root / "timed", 1 if args.quick else 5)
    assets = len(nodes)
    direct = observer_us_per_asset(2_000 if args.quick else 20_000)
    per = {name: us_per_asset(s.wall, baseline, assets) for name, s in samples.items()}
    cpu = {name: us_per_asset(s.cpu, baseline, assets) for name, s in samples.items()}
    for name, s in samples.items():
        print(s.line(name, baseline, assets), file=sys.stderr)

    def pct(table: dict[str, float], name: str, base: str) -> float:
        return round((table[name] / table[base] - 1) * 100, 1) if table[base] else 0.0

    def paired(name: str, what: str = "wall") -> float:
        """Median over rounds of this round's run time against ``off``'s, in percent."""
        mine, off = getattr(samples[name], what), getattr(samples["off"], what)
        return round((statistics.median(m / o for m, o in zip(mine, off, strict=True)) - 1)
                     * 100, 1)

    print(json.dumps({
        "bench": "observability", "assets": assets, "rounds": repeat,
        **{f"{n}_us_per_asset": v for n, v in per.items()},
        **{f"{n}_cpu_us_per_asset": v for n, v in cpu.items()},
        "observer_cpu_us_per_asset": direct,
        "observer_cpu_pct_of_off": round(direct / cpu["off"] * 100, 2) if cpu["off"] else 0.0,
        "in_run_observers_cpu_us_per_asset": observers_in_run,
        "in_run_emit_cpu_us_per_asset": emit_in_run,
        "in_run_emit_pct_of_off_cpu": round(emit_in_run / cpu["off"] * 100, 2)
        if cpu["off"] else 0.0,
        "prometheus_overhead_pct": paired("prometheus"),
        "prometheus_cpu_overhead_pct": paired("prometheus", "cpu"),
        "noop_overhead_pct": paired("noop"),
        "noop_cpu_overhead_pct": paired("noop", "cpu"),
        "control_overhead_pct": paired("off2"),
        "control_cpu_overhead_pct": paired("off2", "cpu"),
        "prometheus_vs_noop_cpu_pct": pct(cpu, "prometheus", "noop"),
        "lineage_overhead_pct": paired("lineage"),
        "lineage_cpu_overhead_pct": paired("lineage", "cpu"),
        "lineage_vs_prometheus_cpu_pct": pct(cpu, "lineage", "prometheus"),
        "lineage_events": lines,
        "median_run_s": {n: round(statistics.median(s.wall), 3) for n, s in samples.items()},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
