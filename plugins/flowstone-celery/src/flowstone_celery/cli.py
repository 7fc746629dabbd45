"""``flowstone worker``: start a Celery worker serving some pipelines.

Registered in ``flowstone.cli``; also runnable as ``python -m flowstone_celery worker``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flowstone.errors import FlowStoneError

__all__ = ["main", "register"]


def register(subparsers: Any) -> None:
    """Add the ``worker`` subcommand to ``flowstone``'s argparse subparsers."""
    parser = subparsers.add_parser(
        "worker",
        help="run a Celery worker for FlowStone pipelines",
        description=(
            "Run a Celery worker that executes the steps of the given pipelines. The broker "
            "comes from FLOWSTONE_BROKER_URL, the run store from FLOWSTONE_DATABASE_URL. "
            "SIGTERM drains in-flight steps; a second SIGTERM stops at once."
        ),
    )
    parser.add_argument("--pipeline", action="append", default=[], metavar="FILE.py:ATTR",
                        help="a pipeline to serve (repeatable; default: FLOWSTONE_PIPELINES)")
    parser.add_argument("--concurrency", type=int, default=None, metavar="N",
                        help="worker processes/threads (default: number of CPUs)")
    parser.add_argument("--queues", default=None, metavar="Q1,Q2",
                        help="queues to consume (default: FLOWSTONE_QUEUE)")
    parser.add_argument("--pool", default=None, choices=["prefork", "threads", "solo"],
                        help="Celery pool (default: prefork)")
    parser.add_argument("--hostname", default=None, help="Celery node name (-n)")
    parser.add_argument("--loglevel", default="INFO", help="log level (default: INFO)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve /metrics and /healthz on this port (needs "
                        "flowstone-observability; default: FLOWSTONE_METRICS_PORT, else none)")
    parser.add_argument("--metrics-host", default=None, metavar="ADDR",
                        help="address the metrics server binds (default 127.0.0.1)")
    parser.add_argument("--no-sweeper", action="store_true",
                        help="do not run the sweeper in this worker (run it elsewhere)")
    parser.add_argument("celery_args", nargs=argparse.REMAINDER, metavar="-- CELERY_ARGS",
                        help="anything after -- goes to `celery worker` unchanged "
                        "(e.g. -- --without-mingle --max-tasks-per-child=100)")
    # Celery's handlers log the worker's lines (flowstone's included): the CLI adds none
    parser.set_defaults(func=handle, own_logging=True)


def handle(args: argparse.Namespace) -> int:
    from flowstone_celery.settings import load_settings
    from flowstone_celery.worker import run_worker

    overrides: dict[str, Any] = {}
    if args.no_sweeper:
        overrides["sweeper"] = False
    if getattr(args, "metrics_port", None) is not None:
        overrides["metrics_port"] = args.metrics_port
    if getattr(args, "metrics_host", None) is not None:
        overrides["metrics_host"] = args.metrics_host
    if args.concurrency is not None and args.concurrency < 1:
        print("flowstone worker: --concurrency must be >= 1", file=sys.stderr)
        return 2
    try:
        settings = load_settings(**overrides)
        specs = list(args.pipeline) or settings.pipeline_specs
        queues = [q.strip() for q in (args.queues or "").split(",") if q.strip()]
        extra = list(getattr(args, "celery_args", None) or [])
        if extra and extra[0] == "--":
            extra = extra[1:]
        return run_worker(specs, settings=settings, concurrency=args.concurrency, queues=queues,
                          pool=args.pool, loglevel=args.loglevel, hostname=args.hostname,
                          extra_args=extra)
    except FlowStoneError as exc:
        print(f"flowstone worker: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flowstone_celery``."""
    parser = argparse.ArgumentParser(prog="python -m flowstone_celery")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))
