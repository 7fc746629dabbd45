"""In-process orchestration overhead: FlowStone vs Dagster and Prefect on the same 500-asset DAG.

The DAG is ``layers`` x ``width`` trivial assets (default 50 x 10 = 500). Every asset after
the first layer reads 1-3 assets of the layer before it (chosen by a seeded RNG, so both
tools see exactly the same graph) and returns ``sum(inputs) + 1``. The work per asset is
nanoseconds, so the wall time of a full run is the orchestrator's own overhead:
planning, state recording, storing and loading every value.

Every tool records every run on local disk (Dagster: every value):

* FlowStone: SQLite run store + filesystem IO manager (the embedded defaults), in a
  temporary directory; each measured run is ``pipeline.run(force=True)`` of every asset.
* Dagster: ``dagster.materialize(assets, instance=...)`` with one
  ``DagsterInstance.ephemeral()`` whose default IO manager pickles every value to its
  temporary storage directory (its run and event storage stay in memory, which favours
  Dagster).
* Prefect 3: every asset a task of one flow, in Prefect's default local setup (its
  temporary local server with a SQLite database, under a temporary ``PREFECT_HOME``),
  results neither persisted nor cached (values stay in memory, which favours Prefect);
  a run lasts until Prefect's server has recorded every task run (it writes them from
  events after the flow call returned); the flow call alone is reported too
  (``prefect_call_only_us_per_asset``); see :func:`prefect_runner`.

Each tool runs in a process of its own (:class:`ToolProcess`, as a user runs it), which
times its runs. Each side gets one warm-up run, then ``--repeat`` measured rounds running
every tool once, each round starting with another tool, so load from elsewhere hits all;
medians of the wall time, less the time the plain function calls take, divided by the
asset count are reported (the CPU time of the tool's process is printed alongside;
Prefect's temporary server is yet another process, so its CPU is not in Prefect's figure).
The last line printed is one JSON object, e.g.::

    {"bench": "inprocess", "assets": 500, "flowstone_us_per_asset": 3239.2,
     "dagster_us_per_asset": 70931.8, "ratio": 21.9, ...}

with ``prefect_us_per_asset``, ``ratio_vs_prefect`` (Prefect's overhead / FlowStone's),
``prefect_call_only_us_per_asset``, ``ratio_vs_prefect_call_only`` and ``prefect`` (version,
mode) after ``ratio``; a peer that is not installed gets ``null``.

Usage::

    python bench/inprocess.py            # 5 measured runs per tool
    python bench/inprocess.py --quick    # CI smoke: 1 measured run per tool
    python bench/inprocess.py --profile  # also cProfile one FlowStone run (top functions)
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import multiprocessing
import os
import platform
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flowstone as fs

SEED = 20240131


@dataclass(frozen=True, slots=True)
class Node:
    """One asset of the benchmark DAG: its name and the names it reads."""

    name: str
    deps: tuple[str, ...]


def build_shape(layers: int, width: int, seed: int = SEED) -> list[Node]:
    """The deterministic DAG: ``layers`` x ``width`` nodes, each reading 1-3 of the layer
    before (the first layer reads nothing)."""
    rng = random.Random(seed)
    nodes: list[Node] = []
    previous: list[str] = []
    for layer in range(layers):
        current = [f"a{layer:03d}_{i:02d}" for i in range(width)]
        for name in current:
            k = min(len(previous), rng.randint(1, 3))
            deps = tuple(sorted(rng.sample(previous, k))) if previous else ()
            nodes.append(Node(name, deps))
        previous = current
    return nodes


def make_function(node: Node) -> Callable[..., int]:
    """A plain function whose parameters are named after its deps (both tools read
    dependencies from parameter names), returning ``sum(inputs) + 1``."""
    params = ", ".join(node.deps)
    body = " + ".join((*node.deps, "1"))
    namespace: dict[str, Any] = {}
    exec(f"def {node.name}({params}):\n    return {body}\n", namespace)
    fn: Callable[..., int] = namespace[node.name]
    return fn


def expected_values(nodes: list[Node]) -> dict[str, int]:
    """Every asset's value computed by calling the functions directly (the oracle)."""
    values: dict[str, int] = {}
    for node in nodes:
        values[node.name] = make_function(node)(*(values[d] for d in node.deps))
    return values


def direct_seconds(nodes: list[Node]) -> float:
    """Time to just call the 500 functions: the work itself, subtracted from both sides."""
    fns = [(make_function(n), n.deps) for n in nodes]
    started = time.perf_counter()
    values: dict[str, int] = {}
    for (fn, deps), node in zip(fns, nodes, strict=True):
        values[node.name] = fn(*(values[d] for d in deps))
    return time.perf_counter() - started


# --- FlowStone -------------------------------------------------------------------------
def flowstone_pipeline(nodes: list[Node], home: Path, executor: Any = None) -> fs.Pipeline:
    assets = [fs.asset(make_function(n)) for n in nodes]
    return fs.Pipeline(
        "bench_inprocess",
        assets,
        store=f"sqlite:///{home / 'flowstone.db'}",  # the embedded default: SQLite store and values
        executor=executor,
    )


def run_flowstone(pipeline: fs.Pipeline) -> None:
    result = pipeline.run(force=True)
    if result.status != "succeeded":
        raise SystemExit(f"FlowStone run failed: {result.error}")


def check_flowstone(pipeline: fs.Pipeline, expected: dict[str, int]) -> None:
    last = next(reversed(expected))
    got = pipeline.get(last)
    if got != expected[last]:
        raise SystemExit(f"FlowStone computed {last}={got}, expected {expected[last]}")


# --- Dagster ---------------------------------------------------------------------------
def dagster_runner(nodes: list[Node], tmp: Path) -> tuple[Callable[[], None], Callable[[], Any]]:
    """(run once, read the last asset's value) for Dagster, or raise ImportError."""
    import dagster

    assets = [dagster.asset(make_function(n)) for n in nodes]
    instance = dagster.DagsterInstance.ephemeral(tempdir=str(tmp))
    last = nodes[-1].name
    holder: dict[str, Any] = {}

    def run() -> None:
        result = dagster.materialize(assets, instance=instance)
        if not result.success:
            raise SystemExit("Dagster run failed")
        holder["result"] = result

    def last_value() -> Any:
        return holder["result"].output_for_node(last)

    return run, last_value


# --- Prefect ---------------------------------------------------------------------------
def prefect_runner(
    nodes: list[Node], home: Path, mode: str = "call"
) -> tuple[Callable[[], None], Callable[[], Any], Callable[[], None], Callable[[], list[float]]]:
    """(run once, read the last asset's value, stop, seconds of each flow call alone) for
    Prefect 3, or raise ImportError.

    Prefect's default local setup: no API URL configured, so the first flow run starts
    Prefect's temporary local server (a uvicorn subprocess on 127.0.0.1 with a SQLite
    database under ``PREFECT_HOME``, here a temporary directory). ``stop`` ends that server.
    Every asset is a task of one flow; tasks do not persist results and do not cache
    (``persist_result=False``, ``cache_policy=NO_CACHE``: Prefect's documented way to skip
    result storage and cache-key hashing). ``mode`` ``submit``: every task ``.submit()``-ed to
    the flow's ``ThreadPoolTaskRunner`` with its dependencies' futures as arguments (Prefect
    resolves them); ``call``: tasks called directly in dependency order. A run lasts until
    the server has recorded every task run as completed (see ``recorded``); the flow call
    alone is timed too and printed.
    """
    home.mkdir(parents=True, exist_ok=True)
    # settings are read when prefect is imported: set them first
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.futures import wait
    from prefect.task_runners import ThreadPoolTaskRunner

    tasks = {n.name: task(make_function(n), cache_policy=NO_CACHE, persist_result=False)
             for n in nodes}
    last = nodes[-1].name
    holder: dict[str, Any] = {}

    @flow(name="bench_inprocess", task_runner=ThreadPoolTaskRunner(), persist_result=False)
    def dag() -> Any:
        if mode == "call":
            values: dict[str, Any] = {}
            for n in nodes:
                values[n.name] = tasks[n.name](**{d: values[d] for d in n.deps})
            return values[last]
        futures: dict[str, Any] = {}
        for n in nodes:
            futures[n.name] = tasks[n.name].submit(**{d: futures[d] for d in n.deps})
        wait(list(futures.values()))
        return futures[last].result()

    def recorded(flow_run_id: Any) -> None:
        """Until Prefect's server has recorded every task run of the flow run as completed
        (it writes task-run states from events, after the flow call has returned): what
        FlowStone and Dagster have done when their call returns."""
        from prefect.client.orchestration import get_client

        body = {"flow_runs": {"id": {"any_": [str(flow_run_id)]}},
                "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
        deadline = time.monotonic() + 600
        with get_client(sync_client=True) as client:
            while (done := client.request("POST", "/task_runs/count", json=body).json()) < len(
                    nodes):
                if time.monotonic() > deadline:
                    raise SystemExit(f"Prefect recorded {done}/{len(nodes)} task runs in 600 s")
                time.sleep(0.02)

    def run() -> None:
        started = time.perf_counter()
        state = dag(return_state=True)
        holder["value"] = state.result()
        holder.setdefault("call_s", []).append(time.perf_counter() - started)
        recorded(state.state_details.flow_run_id)

    def stop() -> None:
        from prefect.server.api.server import SubprocessASGIServer

        for server in list(SubprocessASGIServer._instances.values()):
            server.stop()

    def call_seconds() -> list[float]:
        return list(holder.get("call_s", []))

    return run, lambda: holder["value"], stop, call_seconds


# --- measuring -------------------------------------------------------------------------
@dataclass(slots=True)
class Samples:
    """Wall and CPU seconds (all threads of this process) of each measured run."""

    wall: list[float]
    cpu: list[float]

    def line(self, label: str, baseline: float, assets: int) -> str:
        return (f"{label:<10} median {statistics.median(self.wall):.3f}s wall per run "
                f"({', '.join(f'{s:.2f}' for s in self.wall)}) -> "
                f"{us_per_asset(self.wall, baseline, assets)} us/asset; "
                f"cpu {us_per_asset(self.cpu, baseline, assets)} us/asset")


def measure(
    runners: dict[str, Callable[[], tuple[float, float]]], repeat: int
) -> dict[str, Samples]:
    """One warm-up each, then ``repeat`` rounds running every tool once per round, each
    round starting with the next tool; each runner returns the wall and CPU seconds of its
    run, timed in the tool's own process (see :class:`ToolProcess`).

    Interleaving keeps the comparison fair on a shared machine: a burst of load from
    elsewhere hits every tool instead of whichever happened to be running.
    """
    for run in runners.values():
        run()  # warm-up: imports, caches, first-run schema work
    samples = {name: Samples([], []) for name in runners}
    order = list(runners.items())
    for round_no in range(repeat):
        shift = round_no % len(order)
        for name, run in order[shift:] + order[:shift]:
            wall, cpu = run()
            samples[name].wall.append(wall)
            samples[name].cpu.append(cpu)
    return samples


def serve_tool(tool: str, nodes: list[Node], home: Path, prefect_mode: str, conn: Any) -> None:
    """A tool's own process (see :class:`ToolProcess`): build its runner, then answer
    ``run`` (with the run's wall and CPU seconds), ``last`` (the last asset's value),
    ``calls`` (Prefect's flow-call times) and ``stop``."""
    logging.disable(logging.WARNING)
    try:
        if tool == "flowstone":
            pipeline = flowstone_pipeline(nodes, home)
            run: Callable[[], None] = lambda: run_flowstone(pipeline)  # noqa: E731
            last: Callable[[], Any] = lambda: pipeline.get(nodes[-1].name)  # noqa: E731
            stop: Callable[[], None] = pipeline.close
            calls: Callable[[], list[float]] = list
        elif tool == "dagster":
            run, last = dagster_runner(nodes, home)
            stop, calls = (lambda: None), list
        else:
            run, last, stop, calls = prefect_runner(nodes, home, prefect_mode)
    except ImportError as exc:
        conn.send(("missing", str(exc)))
        return
    conn.send(("ready", None))
    try:
        while True:
            command = conn.recv()
            if command == "run":
                wall, cpu = time.perf_counter(), time.process_time()
                run()
                conn.send((time.perf_counter() - wall, time.process_time() - cpu))
            elif command == "last":
                conn.send(last())
            elif command == "calls":
                conn.send(calls())
            else:
                return
    finally:
        stop()  # Prefect's temporary server: no process outlives the benchmark
        conn.close()


class ToolProcess:
    """One tool, run in a process of its own (as a user runs it): its imports, objects and
    garbage collections never weigh on another tool's runs (Dagster's ~300,000 objects made
    every full collection during a FlowStone run in the same process take tens of ms).
    Raises ImportError if the tool is not installed."""

    def __init__(self, tool: str, nodes: list[Node], home: Path, prefect_mode: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(
            target=serve_tool, args=(tool, nodes, home, prefect_mode, child), daemon=True
        )
        self._proc.start()
        child.close()
        state, detail = self._conn.recv()
        if state != "ready":
            self.stop()
            raise ImportError(detail)

    def ask(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def run(self) -> tuple[float, float]:
        wall, cpu = self.ask("run")
        return float(wall), float(cpu)

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # the process is gone already
            self._conn.send("stop")
        self._proc.join(timeout=120)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def us_per_asset(samples: list[float], baseline: float, assets: int) -> float:
    return round(max(0.0, statistics.median(samples) - baseline) / assets * 1e6, 1)


def profile_flowstone(nodes: list[Node], home: Path, top: int) -> str:
    """cProfile one full run of the default executor, on its worker thread: with
    ``max_workers=1`` every step runs on the dispatch's one worker, and the profiler is
    switched on in that thread (cProfile sees one thread) for the whole worker loop,
    batched finishes included. The dispatching thread only waits meanwhile."""
    from flowstone.defaults.step_workers import StepWorkers

    profiler = cProfile.Profile()
    serve = StepWorkers._serve
    profiling = [False]

    def profiled(self: Any, me: Any) -> None:
        if not profiling[0]:
            return serve(self, me)
        profiler.enable()
        try:
            return serve(self, me)
        finally:
            profiler.disable()

    pipeline = flowstone_pipeline(nodes, home, executor=fs.InProcessExecutor(max_workers=1))
    StepWorkers._serve = profiled  # type: ignore[method-assign]
    try:
        run_flowstone(pipeline)  # warm-up
        started = time.perf_counter()
        run_flowstone(pipeline)
        plain_s = time.perf_counter() - started
        profiling[0] = True
        run_flowstone(pipeline)
    finally:
        StepWorkers._serve = serve  # type: ignore[method-assign]
        pipeline.close()
    out = io.StringIO()
    out.write(f"one worker thread (max_workers=1): {plain_s:.3f}s per run unprofiled, "
              f"{plain_s / len(nodes) * 1e6:.0f} us/asset; the profile is of its thread\n")
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5, help="measured runs per tool")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 1 measured run each")
    parser.add_argument("--no-dagster", action="store_true", help="skip Dagster")
    parser.add_argument("--no-prefect", action="store_true", help="skip Prefect")
    parser.add_argument("--prefect-mode", choices=("call", "submit"), default="call",
                        help="Prefect tasks called in dependency order (call, its faster form "
                             "here) or submitted to the thread-pool task runner with futures")
    parser.add_argument("--profile", action="store_true",
                        help="print a cProfile of one FlowStone run")
    parser.add_argument("--profile-top", type=int, default=40, help="functions to list")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    # Both tools log every step at INFO/DEBUG; console output is not what is measured.
    logging.disable(logging.WARNING)
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

    nodes = build_shape(args.layers, args.width)
    n = len(nodes)
    expected = expected_values(nodes)
    baseline = min(direct_seconds(nodes) for _ in range(5))
    edges = sum(len(x.deps) for x in nodes)
    print(f"DAG: {args.layers} layers x {args.width} wide = {n} assets, {edges} edges; "
          f"direct calls {baseline * 1e6:.0f} us total; repeat={repeat} (+1 warm-up)")
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs, flowstone {fs.__version__}")

    with tempfile.TemporaryDirectory(prefix="flowstone-bench-") as tmp:
        root = Path(tmp)
        mode = args.prefect_mode
        tools = {"flowstone": ToolProcess("flowstone", nodes, root / "flowstone", mode)}
        for tool, skipped, home in (("dagster", args.no_dagster, "dagster"),
                                    ("prefect", args.no_prefect, "prefect-home")):  # fmt: skip
            if skipped:
                print(f"{tool}: skipped (--no-{tool})")
                continue
            try:
                tools[tool] = ToolProcess(tool, nodes, root / home, mode)
            except ImportError:
                print(f"{tool}: not installed; skipping it (pip install {tool} to compare)")
        try:
            samples = measure({name: tool.run for name, tool in tools.items()}, repeat)
            last = nodes[-1].name
            for name, tool in tools.items():
                if tool.ask("last") != expected[last]:
                    raise SystemExit(f"{name} computed {last}={tool.ask('last')}, "
                                     f"expected {expected[last]}")  # fmt: skip
            calls = tools["prefect"].ask("calls")[1:] if "prefect" in tools else []
        finally:
            for tool in tools.values():
                tool.stop()
        for name, got in samples.items():
            print(got.line(name + ":", baseline, n))
        # (calls: the measured runs' flow calls, the first was the warm-up)
        if calls:
            print(f"prefect:   the flow call alone took {statistics.median(calls):.3f}s "
                  f"({', '.join(f'{c:.2f}' for c in calls)}); the rest of each run is its "
                  "server recording the task runs")
        fs_us = us_per_asset(samples["flowstone"].wall, baseline, n)
        dg_us = us_per_asset(samples["dagster"].wall, baseline, n) if "dagster" in samples else None
        pf_us = us_per_asset(samples["prefect"].wall, baseline, n) if "prefect" in samples else None
        pf_call_us = us_per_asset(calls, baseline, n) if calls else None
        if args.profile:
            print(profile_flowstone(nodes, root / "flowstone-profile", args.profile_top))

    def ratio(peer_us: float | None) -> float | None:
        return round(peer_us / fs_us, 1) if peer_us is not None and fs_us > 0 else None

    print(json.dumps({
        "bench": "inprocess",
        "assets": n,
        "flowstone_us_per_asset": fs_us,
        "dagster_us_per_asset": dg_us,
        "ratio": ratio(dg_us),  # Dagster's overhead / FlowStone's
        "prefect_us_per_asset": pf_us,
        "ratio_vs_prefect": ratio(pf_us),
        # the flow call alone, before Prefect's server recorded the task runs
        "prefect_call_only_us_per_asset": pf_call_us,
        "ratio_vs_prefect_call_only": ratio(pf_call_us),
        "prefect": {"version": _version("prefect"), "mode": args.prefect_mode}
        if pf_us is not None else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
