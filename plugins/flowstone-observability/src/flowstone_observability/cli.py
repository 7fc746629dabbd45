"""``flowstone metrics``: serve metrics and health, check health, list the metrics.

Registered through the ``flowstone.cli`` entry point::

    flowstone metrics serve FILE_OR_MODULE:PIPELINE... [--port 9464] [--host 127.0.0.1]
    flowstone metrics health FILE_OR_MODULE:PIPELINE... [--json]
    flowstone metrics list [--json]

``flowstone health`` (a core command) gives the same report as ``metrics health`` when this
package is installed. Importing this module imports no prometheus-client.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from contextlib import ExitStack
from typing import Any

__all__ = ["register"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add the ``metrics`` command to FlowStone's CLI."""
    metrics = subparsers.add_parser(
        "metrics", help="serve Prometheus metrics and health; check health",
        description="Prometheus metrics, /healthz and health checks (flowstone-observability).")
    commands = metrics.add_subparsers(dest="metrics_command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help="serve /metrics and /healthz for some pipelines until stopped",
        description="Serve /metrics (freshness read from the pipelines' stores, plus the "
        "values of every process writing to PROMETHEUS_MULTIPROC_DIR if set) and /healthz. "
        "SIGTERM or Ctrl-C stop it.")
    serve.add_argument("specs", nargs="+", metavar="FILE_OR_MODULE:PIPELINE")
    serve.add_argument("--port", type=int, default=9464, help="TCP port (default 9464)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--refresh", type=float, default=15.0, metavar="S",
                       help="seconds store reads are reused between scrapes (default 15)")
    serve.set_defaults(func=_serve)

    health = commands.add_parser(
        "health", help="check store, migrations, broker, workers, heartbeat, resources",
        description="Check every dependency of the pipelines. Exits 0 when healthy, 1 if not.")
    health.add_argument("specs", nargs="+", metavar="FILE_OR_MODULE:PIPELINE")
    health.add_argument("--json", action="store_true", help="print one JSON document")
    health.add_argument("--heartbeat-max-age", type=float, default=None, metavar="S",
                        help="seconds after which a daemon/sweeper heartbeat is stale "
                        "(default 120)")
    health.set_defaults(func=_health)

    listing = commands.add_parser("list", help="list every exported metric")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(func=_list)


def _open(stack: ExitStack, specs: list[str]) -> list[Any]:
    from flowstone._cli.common import open_pipeline

    return [stack.enter_context(open_pipeline(spec)) for spec in specs]


def _serve(args: argparse.Namespace) -> int:
    from flowstone_observability.serving import serve

    if args.refresh <= 0:
        print("flowstone metrics serve: --refresh must be positive", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with ExitStack() as stack:
            pipelines = _open(stack, args.specs)
            serving = serve(pipelines, port=args.port, host=args.host, role="standalone",
                            observe=False, refresh_seconds=args.refresh)
            stack.callback(serving.close)
            print(f"serving {serving.server.url}/metrics and /healthz for "
                  f"{', '.join(p.name for p in pipelines)} (SIGTERM/Ctrl-C stops)", flush=True)
            stop.wait()
            print("metrics server stopped", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def _health(args: argparse.Namespace) -> int:
    from flowstone_observability.health import DEFAULT_HEARTBEAT_MAX_AGE, check

    max_age = args.heartbeat_max_age or DEFAULT_HEARTBEAT_MAX_AGE
    if max_age <= 0:
        print("flowstone metrics health: --heartbeat-max-age must be positive", file=sys.stderr)
        return EXIT_USAGE
    with ExitStack() as stack:
        report = check(_open(stack, args.specs), heartbeat_max_age=max_age)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.to_text())
    return EXIT_OK if report.ok else EXIT_FAILURE


def _list(args: argparse.Namespace) -> int:
    from flowstone_observability.metrics import METRICS

    if args.json:
        print(json.dumps({"metrics": [
            {"name": m.name, "type": m.kind, "labels": list(m.labels), "help": m.help,
             "source": m.source, "samples": list(m.samples())} for m in METRICS]}, indent=2))
        return EXIT_OK
    for m in METRICS:
        print(f"{m.samples()[0] if m.kind == 'counter' else m.name:<58} {m.kind:<9} "
              f"{','.join(m.labels)}")
    return EXIT_OK
