"""``flowstone scatter status|retry-failed``: live progress, and re-running failed items."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flowstone.errors import FlowStoneError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``flowstone scatter ...`` to ``flowstone``'s argparse subparsers."""
    parser = subparsers.add_parser("scatter", help="inspect and retry Celery scatters",
                                   description="Progress and retries of durable scatters.")
    sub = parser.add_subparsers(dest="scatter_command", required=True)
    status = sub.add_parser("status", help="pending/running/succeeded/failed item counts")
    status.add_argument("spec", metavar="FILE_OR_MODULE:PIPELINE")
    status.add_argument("run_id")
    status.add_argument("asset")
    status.add_argument("--partition", default=None)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_status)
    retry = sub.add_parser(
        "retry-failed", help="re-run only the failed items of a run",
        description="Re-open a failed/cancelled run, or start a new run of the scatter "
        "asset of a succeeded run that reuses its succeeded items.")
    retry.add_argument("spec", metavar="FILE_OR_MODULE:PIPELINE")
    retry.add_argument("run_id")
    retry.add_argument("--asset", default=None,
                       help="the scatter asset (needed if a succeeded run scattered several)")
    retry.add_argument("--partition", default=None)
    retry.add_argument("--json", action="store_true")
    retry.set_defaults(func=_retry)


def _status(args: argparse.Namespace) -> int:
    from flowstone.loading import load_pipeline
    from flowstone.partitions import parse_partition
    from flowstone_scatter.status import scatter_status

    try:
        pipeline = load_pipeline(args.spec)
        asset = pipeline.dag[args.asset]
        key = (parse_partition(args.partition, asset.partitions)
               if args.partition is not None else None)
        s = scatter_status(pipeline, args.run_id, asset.name, key)
    except (FlowStoneError, KeyError) as exc:
        print(f"flowstone scatter status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(s.to_dict()))
    else:
        total = "?" if s.total is None else s.total
        where = s.asset if s.partition is None else f"{s.asset}[{s.partition}]"
        print(f"{where} in {s.run_id}: {s.state}; {total} items: "
              f"{s.pending} pending, {s.running} running, {s.succeeded} succeeded, "
              f"{s.failed} failed" + (f"\nerror: {s.error}" if s.error else ""))
    return 0


def _retry(args: argparse.Namespace) -> int:
    from flowstone.loading import load_pipeline
    from flowstone.partitions import parse_partition
    from flowstone_scatter.status import retry_failed

    try:
        pipeline = load_pipeline(args.spec)
        key = None
        if args.partition is not None:
            parts = pipeline.dag[args.asset].partitions if args.asset else None
            key = parse_partition(args.partition, parts)
        result = retry_failed(pipeline, args.run_id, args.asset, key)
    except (FlowStoneError, KeyError) as exc:
        print(f"flowstone scatter retry-failed: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"run_id": result.run_id, "status": result.status,
                          "retry_of": args.run_id}))
    elif result.run_id == args.run_id:
        print(f"run {result.run_id} re-opened: {result.status}")
    else:
        print(f"run {result.run_id} retried the failed items of {args.run_id}: "
              f"{result.status}")
    return 0
