"""OpenLineage export cost per asset step: ``OpenLineageObserver`` fed the events of realistic
steps directly (no engine), delivering to a file.

Each step is an ``asset.started`` and an ``asset.succeeded`` event of an asset with two
upstream assets (every tenth step a scatter asset, whose ``scatter.progress`` rides on its
COMPLETE event as the ``flowstone_scatter`` facet; every twentieth step fails, with an
``errorMessage`` facet), inside pipeline runs of 100 steps (their START and COMPLETE
events included). The measured figure is this process's CPU time (both threads) from the
first event to the last line written, per step:

* ``background``: the default delivery (the engine's thread enqueues, a sender thread
  builds and writes), including the wait until all are written;
* ``sync``: built and written in the calling thread;
* ``build``: ``observer.build()`` alone, the client's ``RunEvent`` (what the HTTP transport
  is given);
* ``paced``: background delivery of events arriving ``--pace`` seconds apart (the caller
  sleeps, releasing the GIL, as the engine does in its IO), less the pacing loop's own
  CPU: what a run whose steps take time costs, where the sender would otherwise wake for
  every event.

The last line printed is one JSON object::

    {"bench": "lineage", "steps": 5000, "background_cpu_us_per_step": 35.0, ...}

Usage::

    python bench/lineage.py                 # 5000 steps, best of 5 rounds
    python bench/lineage.py --profile       # also cProfile the sync delivery
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from flowstone.events import Event
from flowstone_observability import OpenLineageObserver
from flowstone_observability.lineage import file_transport


def step_events(steps: int, per_run: int = 100) -> list[Event]:
    """The events of ``steps`` asset steps in runs of ``per_run`` steps."""
    events: list[Event] = []
    for n in range(steps):
        run = f"run-{n // per_run}"
        if n % per_run == 0:
            events.append(Event("run.started", "bench", run))
        asset = f"asset_{n % per_run}"
        upstream = [f"asset_{(n - 1) % per_run}", f"asset_{(n - 2) % per_run}"]
        events.append(Event("asset.started", "bench", run, asset, "",
                            {"attempt": 1, "upstream_assets": upstream}))
        if n % 10 == 9:
            events.append(Event("scatter.progress", "bench", run, asset, "",
                                {"total": 40, "done": 40, "failed": 1}))
        if n % 20 == 19:
            events.append(Event("asset.failed", "bench", run, asset, "",
                                {"error": "ValueError: broken", "upstream_assets": upstream}))
        else:
            events.append(Event("asset.succeeded", "bench", run, asset, "",
                                {"duration_s": 0.001, "upstream_assets": upstream}))
        if n % per_run == per_run - 1:
            events.append(Event("run.finished", "bench", run, data={"status": "succeeded"}))
    return events


def cpu_us_per_step(run: Callable[[], None], steps: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return round(best / steps * 1e6, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best is reported")
    parser.add_argument("--profile", action="store_true", help="cProfile the sync delivery")
    parser.add_argument("--pace", type=float, default=0.0005,
                        help="seconds between events in the paced round")
    args = parser.parse_args(argv)
    events = step_events(args.steps)
    with tempfile.TemporaryDirectory(prefix="fs-bench-lineage-") as tmp:
        path = Path(tmp) / "lineage.jsonl"

        def deliver(delivery: str) -> Callable[[], None]:
            def run() -> None:
                path.unlink(missing_ok=True)
                observer = OpenLineageObserver(file_transport(path), delivery=delivery,  # type: ignore[arg-type]
                                               registry=CollectorRegistry())
                for event in events:
                    observer.on_event(event)
                observer.close(120)
            return run

        paced_steps = max(1, args.steps // 5)
        paced_events = step_events(paced_steps)

        def pacing() -> None:
            for _ in paced_events:
                time.sleep(args.pace)

        def paced() -> None:
            path.unlink(missing_ok=True)
            observer = OpenLineageObserver(file_transport(path), registry=CollectorRegistry())
            for event in paced_events:
                observer.on_event(event)
                time.sleep(args.pace)
            observer.close(120)

        def build() -> None:
            observer = OpenLineageObserver(file_transport(path), delivery="sync",
                                           registry=CollectorRegistry())
            for event in events:
                observer.build(event)

        figures = {
            "background_cpu_us_per_step": cpu_us_per_step(deliver("background"), args.steps,
                                                          args.repeat),
            "sync_cpu_us_per_step": cpu_us_per_step(deliver("sync"), args.steps, args.repeat),
            "build_cpu_us_per_step": cpu_us_per_step(build, args.steps, args.repeat),
            "paced_cpu_us_per_step": round(
                cpu_us_per_step(paced, paced_steps, args.repeat)
                - cpu_us_per_step(pacing, paced_steps, args.repeat), 1),
        }
        lines = sum(1 for _ in path.open())  # of the last round, the paced one
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(deliver("sync"))
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue(), file=sys.stderr)
    print(json.dumps({"bench": "lineage", "steps": args.steps, **figures,
                      "paced_steps": paced_steps, "paced_lines_written": lines}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
