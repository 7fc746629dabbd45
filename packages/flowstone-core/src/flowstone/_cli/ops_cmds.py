"""``daemon``, ``health``, ``plugins``: operating FlowStone."""

from __future__ import annotations

import argparse
import sys
import threading
from contextlib import ExitStack
from typing import Any

from flowstone._cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Subparsers,
    add_json,
    add_spec,
    open_pipeline,
)
from flowstone._cli.observability import find_operations
from flowstone._cli.output import print_json, table
from flowstone.daemon import Daemon, TickReport, install_signal_handlers
from flowstone.errors import UsageError
from flowstone.registry import PluginRegistry

__all__ = ["register"]


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "daemon",
        parents=[parent],
        help="fire schedules and sensors, expire waits, recover lost work",
        description="Tick the schedules and sensors of the pipelines every --interval "
        "seconds; each tick also fails expired approvals and gates, prunes old route "
        "decisions and re-dispatches work that was lost (pipeline.recover). SIGTERM or "
        "SIGINT finish the current tick and exit 0. Any number of daemons may serve the "
        "same store: a tick fires once. --once ticks once, prints the report and exits 1 "
        "if anything in it failed.",
    )
    p.add_argument(
        "specs", nargs="+", metavar="FILE_OR_MODULE:PIPELINE", help="one or more pipelines"
    )
    p.add_argument(
        "--interval",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds between ticks (default 30)",
    )
    p.add_argument("--once", action="store_true", help="tick once and exit")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve /metrics and /healthz on this port (needs flowstone-observability)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address the metrics server binds (default 127.0.0.1: this machine only)",
    )
    add_json(p)
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser(
        "health",
        parents=[parent],
        help="check the store, executor and resources",
        description="Check the pipeline's run store, executor and resources. Exits 1 when "
        "anything is unhealthy. With flowstone-observability installed: store, migrations, "
        "broker, workers (and the pipelines each serves), daemon/sweeper heartbeat and "
        "resources, one check each.",
    )
    add_spec(p)
    add_json(p)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser(
        "plugins",
        parents=[parent],
        help="list installed plugins by entry-point group",
        description="List every plugin by group: name, what it points to, and the "
        "distribution that provides it. Imports no plugin.",
    )
    add_json(p)
    p.set_defaults(func=cmd_plugins)


def _report_json(report: TickReport) -> dict[str, Any]:
    return {
        "now": report.now,
        "fired": list(report.fired),
        "skipped": list(report.skipped),
        "errors": list(report.errors),
        "expired": report.expired,
        "pruned": report.pruned,
        "recovered": report.recovered,
    }


def _print_report(report: TickReport) -> None:
    print(report.summary())
    for f in report.fired:
        print(f"  fired {f.source} {f.pipeline}:{f.name} {f.key} -> run {f.run_id} ({f.status})")
    for s in report.skipped:
        print(f"  skipped {s.source} {s.pipeline}:{s.name} {s.key}: {s.reason}")
    sys.stdout.flush()
    for e in report.errors:
        print(
            f"  error {e.source} {e.pipeline}:{e.name} {e.key or ''}: {e.error}",
            file=sys.stderr,
            flush=True,
        )


def cmd_daemon(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval must be a positive number of seconds, got {args.interval:g}")
    if args.json and not args.once:
        raise UsageError("--json works with --once (one tick, one document)")
    metrics = None
    if args.metrics_port is not None:
        metrics = find_operations(required_for="--metrics-port")
    with ExitStack() as stack:
        pipelines = [stack.enter_context(open_pipeline(spec)) for spec in args.specs]
        daemon = Daemon(pipelines)
        serving = None
        if metrics is not None:
            serving = metrics.serve(
                pipelines, port=args.metrics_port, host=args.metrics_host, role="daemon"
            )
            stack.callback(serving.close)
            out = sys.stderr if args.json else sys.stdout  # --json prints one document
            print(f"metrics on {serving.url}/metrics and /healthz", file=out, flush=True)
        if args.once:
            report = daemon.tick()
            if serving is not None:
                serving.tick(report)
            if args.json:
                print_json(_report_json(report))
            else:
                _print_report(report)
            return EXIT_FAILURE if report.errors or report.failed_runs else EXIT_OK
        stop = threading.Event()
        restore = install_signal_handlers(stop)
        try:
            names = ", ".join(p.name for p in pipelines)
            print(
                f"daemon serving {names} every {args.interval:g}s (SIGTERM/Ctrl-C stops)",
                flush=True,
            )
            while not stop.is_set():
                try:
                    report = daemon.tick()
                    if serving is not None:
                        serving.tick(report)
                    _print_report(report)
                except Exception as exc:  # tick() reports failures; this is a broken clock
                    print(
                        f"error: daemon tick failed: {type(exc).__name__}: {exc}",
                        file=sys.stderr,
                        flush=True,
                    )
                stop.wait(args.interval)
            print("daemon stopped", flush=True)
        finally:
            restore()
        return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    deep = find_operations()  # flowstone-observability's checks, when installed
    if deep is not None:
        with open_pipeline(args.spec) as pipeline:
            result = deep.health([pipeline])
        if args.json:
            print_json(result.to_json())
        else:
            _print_health(result.to_json())
            print(result.to_text())
        return EXIT_OK if result.ok else EXIT_FAILURE
    with open_pipeline(args.spec) as pipeline:
        report = pipeline.health()
        if args.json:
            print_json(report)
        else:
            _print_health(report)
            print("healthy" if report.get("ok") else "UNHEALTHY")
        return EXIT_OK if report.get("ok") else EXIT_FAILURE


def _print_health(report: dict[str, Any]) -> None:
    """The core report's lines: store, executor, resources."""
    for key, value in report.items():
        if key in ("ok", "at", "checks", "pipelines"):
            continue
        if isinstance(value, dict):
            print(f"{key}:" + ("" if value else " none"))
            for name, state in value.items():
                print(f"  {name}: {state}")
        else:
            print(f"{key}: {value}")


def cmd_plugins(args: argparse.Namespace) -> int:
    groups = PluginRegistry().describe()
    if args.json:
        print_json(
            {
                "plugins": {
                    group: [
                        {
                            "name": i.name,
                            "value": i.value,
                            "distribution": i.distribution,
                            "version": i.version,
                        }
                        for i in infos
                    ]
                    for group, infos in groups.items()
                }
            }
        )
        return EXIT_OK
    for group, infos in groups.items():
        print(group)
        if not infos:
            print("  (none)")
            continue
        rows = [
            (i.name, i.value, i.distribution + (f" {i.version}" if i.version else ""))
            for i in infos
        ]
        print(
            "\n".join(
                "  " + line for line in table(("NAME", "VALUE", "DISTRIBUTION"), rows).splitlines()
            )
        )
    return EXIT_OK
