"""``get``, ``status``, ``graph``, ``invalidate``, ``runs``, ``lineage``: reading state."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flowstone._cli.common import (
    EXIT_OK,
    Subparsers,
    add_json,
    add_partition,
    add_spec,
    key_text,
    open_pipeline,
    partition_to_read,
)
from flowstone._cli.output import dump_json, print_json, table
from flowstone.errors import UsageError
from flowstone.partitions import encode_partition
from flowstone.records import MaterializationRecord, RunRecord

__all__ = ["materialization_json", "register", "run_json"]

_RUN_STATUSES = ("running", "waiting", "succeeded", "failed", "cancelled")


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "get",
        parents=[parent],
        help="print an asset's latest value",
        description="Print the latest value of ASSET for the partition (text as-is, "
        "anything else as JSON). Exits 1 when the asset has no value yet.",
    )
    add_spec(p)
    p.add_argument("asset", metavar="ASSET")
    add_partition(p)
    add_json(p)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser(
        "status",
        parents=[parent],
        help="state of an asset's newest materialization",
        description="Print the state of ASSET's newest materialization for the partition "
        "(succeeded, failed, waiting, ...) or 'never materialized'. Always exits 0.",
    )
    add_spec(p)
    p.add_argument("asset", metavar="ASSET")
    add_partition(p)
    add_json(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("graph", parents=[parent], help="draw the asset graph")
    add_spec(p)
    p.add_argument(
        "--format", choices=("ascii", "mermaid", "dot"), default="ascii", help="default: ascii"
    )
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser(
        "invalidate",
        parents=[parent],
        help="stop reusing an asset's values",
        description="Mark ASSET's materializations for one partition (or every partition) "
        "invalid, so the next run recomputes them. Values stay in storage.",
    )
    add_spec(p)
    p.add_argument("asset", metavar="ASSET")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--partition", "-p", metavar="P", help="partition key as text")
    which.add_argument("--all-partitions", action="store_true", help="every partition")
    add_json(p)
    p.set_defaults(func=cmd_invalidate)

    p = sub.add_parser("runs", parents=[parent], help="list recent runs, newest first")
    add_spec(p)
    p.add_argument("--status", choices=_RUN_STATUSES, help="only runs with this status")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N (default 20)")
    add_json(p)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser(
        "lineage",
        parents=[parent],
        help="what an asset's latest value was computed from (or feeds)",
        description="List the materializations ASSET's latest value was computed from, or "
        "with --downstream the ones computed from it. Exits 1 when it has no value yet.",
    )
    add_spec(p)
    p.add_argument("asset", metavar="ASSET")
    add_partition(p)
    p.add_argument("--downstream", action="store_true", help="follow lineage downstream")
    p.add_argument("--recursive", action="store_true", help="follow lineage all the way")
    add_json(p)
    p.set_defaults(func=cmd_lineage)


def materialization_json(m: MaterializationRecord) -> dict[str, Any]:
    return {
        "id": m.id,
        "asset": m.asset,
        "partition": m.partition or None,
        "state": m.state,
        "run_id": m.run_id,
        "attempt": m.attempt,
        "started_at": m.started_at,
        "finished_at": m.finished_at,
        "error": m.error,
        "upstream": list(m.upstream),
        "invalidated": m.invalidated,
        "metadata": dict(m.metadata),
    }


def run_json(r: RunRecord) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "pipeline": r.pipeline,
        "status": r.status,
        "targets": list(r.targets),
        "partition": r.partition or None,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "error": r.error,
        "tags": dict(r.tags),
    }


def cmd_get(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        key = partition_to_read(pipeline, args.asset, args.partition)
        value = pipeline.get(args.asset, key)
        if args.json:
            print_json({"asset": args.asset, "partition": key_text(key), "value": value})
        elif isinstance(value, str):
            sys.stdout.write(value if value.endswith("\n") else value + "\n")
        else:
            print(dump_json(value))
        return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        key = partition_to_read(pipeline, args.asset, args.partition)
        name = pipeline.dag[args.asset].name
        newest = pipeline.store.list_materializations(
            pipeline.name, asset=name, partition=encode_partition(key), limit=1
        )
        latest = newest[0] if newest else None
        if args.json:
            print_json(
                {
                    "asset": name,
                    "partition": key_text(key),
                    "status": latest.state if latest else None,
                    "materialization": materialization_json(latest) if latest else None,
                }
            )
        elif latest is None:
            print(f"{name}: never materialized")
        else:
            when = latest.finished_at or latest.started_at
            at = f" at {when.isoformat(timespec='seconds')}" if when else ""
            note = " (invalidated)" if latest.invalidated else ""
            print(f"{name}: {latest.state}{note} (run {latest.run_id}{at})")
            if latest.error:
                print(f"error: {latest.error}")
        return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        print(pipeline.graph(args.format))
        return EXIT_OK


def cmd_invalidate(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        key = (
            None if args.all_partitions else partition_to_read(pipeline, args.asset, args.partition)
        )
        count = pipeline.invalidate(args.asset, key, all_partitions=args.all_partitions)
        where = "every partition" if args.all_partitions else f"partition {key_text(key)}"
        if key is None and not args.all_partitions:
            where = "no partition"
        if args.json:
            print_json(
                {
                    "asset": args.asset,
                    "partition": None if args.all_partitions else key_text(key),
                    "all_partitions": args.all_partitions,
                    "invalidated": count,
                }
            )
        else:
            print(f"invalidated {count} materialization(s) of {args.asset!r} ({where})")
        return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    with open_pipeline(args.spec) as pipeline:
        runs = pipeline.runs(status=args.status, limit=args.limit)
        if args.json:
            print_json({"runs": [run_json(r) for r in runs]})
        elif not runs:
            print("no runs" + (f" with status {args.status}" if args.status else ""))
        else:
            rows = [
                (r.run_id, r.status, ",".join(r.targets), r.partition, r.created_at, r.error)
                for r in runs
            ]
            print(
                table(("RUN ID", "STATUS", "TARGETS", "PARTITION", "CREATED (UTC)", "ERROR"), rows)
            )
        return EXIT_OK


def cmd_lineage(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        key = partition_to_read(pipeline, args.asset, args.partition)
        walk = pipeline.lineage.downstream if args.downstream else pipeline.lineage.upstream
        records = walk(args.asset, key, recursive=args.recursive)
        direction = "downstream" if args.downstream else "upstream"
        if args.json:
            print_json(
                {
                    "asset": args.asset,
                    "partition": key_text(key),
                    "direction": direction,
                    "recursive": args.recursive,
                    "materializations": [materialization_json(m) for m in records],
                }
            )
        elif not records:
            print(f"{args.asset!r} has no {direction} materializations")
        else:
            rows = [(m.asset, m.partition, m.state, m.id, m.run_id, m.finished_at) for m in records]
            print(f"{direction} of {args.asset!r}:")
            print(
                table(("ASSET", "PARTITION", "STATE", "MATERIALIZATION", "RUN", "FINISHED"), rows)
            )
        return EXIT_OK
