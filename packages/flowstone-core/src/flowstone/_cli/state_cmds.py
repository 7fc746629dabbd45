"""``get``, ``status``, ``graph``, ``invalidate``, ``runs``, ``lineage``: reading state."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
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
from flowstone._cli.run_progress import RunView, list_run_views
from flowstone.errors import UsageError
from flowstone.partitions import encode_partition
from flowstone.records import MaterializationRecord, RunRecord
from flowstone.runs import RunResult

__all__ = [
    "duration_text",
    "finished_at",
    "lineage_tree",
    "materialization_json",
    "register",
    "run_json",
    "run_seconds",
    "tree_rows",
]

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


_FINISHED = frozenset({"succeeded", "failed", "cancelled"})


def finished_at(r: RunRecord) -> datetime | None:
    """When a run ended (its last update, once it is succeeded, failed or cancelled)."""
    return r.updated_at if r.status in _FINISHED else None


def run_seconds(r: RunRecord, now: datetime | None = None) -> float:
    """How long the run took, or has been going on so far."""
    end = finished_at(r) or now or datetime.now(UTC)
    return max((end - r.created_at).total_seconds(), 0.0)


def duration_text(seconds: float) -> str:
    """``0.42s``, ``12.3s``, ``4m 05s``, ``2h 03m``: a duration at a glance."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def run_json(r: RunRecord, view: RunView | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if view is not None and view.status != r.status:
        extra["stored_status"] = r.status
    if view is not None and view.scatters:
        extra["scatters"] = [
            {
                "asset": asset,
                "partition": partition or None,
                **(dataclasses.asdict(counts) if counts else {}),
            }
            for asset, partition, counts in view.scatters
        ]
    if view is not None:
        extra["partial_failures"] = [f.to_dict() for f in view.partial_failures]
    return {
        "run_id": r.run_id,
        "pipeline": r.pipeline,
        "status": view.status if view is not None else r.status,
        "targets": list(r.targets),
        "partition": r.partition or None,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "finished_at": finished_at(r),
        "duration_seconds": round(run_seconds(r), 3),
        "error": r.error,
        "tags": dict(r.tags),
        **extra,
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
        # what the run that made it tolerated (a failed optional branch, failed items)
        made_by = pipeline.store.get_run(latest.run_id) if latest else None
        partial = RunResult(pipeline, made_by).partial_failures if made_by else ()
        if args.json:
            print_json(
                {
                    "asset": name,
                    "partition": key_text(key),
                    "status": latest.state if latest else None,
                    "materialization": materialization_json(latest) if latest else None,
                    "partial_failures": [f.to_dict() for f in partial],
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
            for f in partial:
                print(f"tolerated failure in run {latest.run_id}: {f.asset}: {f.error}")
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
        views = list_run_views(pipeline, args.status, args.limit)
        if args.json:
            print_json({"runs": [run_json(v.run, v) for v in views]})
        elif not views:
            print("no runs" + (f" with status {args.status}" if args.status else ""))
        else:
            now = datetime.now(UTC)
            rows = [
                (
                    r.run_id,
                    view.status,
                    ",".join(r.targets),
                    r.partition,
                    r.created_at,
                    finished_at(r),
                    duration_text(run_seconds(r, now)) + ("" if finished_at(r) else " so far"),
                    view.progress_text() or r.error,
                )
                for view in views
                for r in (view.run,)
            ]
            headers = ("RUN ID", "STATUS", "TARGETS", "PARTITION", "CREATED (UTC)")
            print(table((*headers, "FINISHED (UTC)", "DURATION", "PROGRESS / ERROR"), rows))
        return EXIT_OK


def cmd_lineage(args: argparse.Namespace) -> int:
    with open_pipeline(args.spec) as pipeline:
        key = partition_to_read(pipeline, args.asset, args.partition)
        walk = pipeline.lineage.downstream if args.downstream else pipeline.lineage.upstream
        records = walk(args.asset, key, recursive=args.recursive)
        direction = "downstream" if args.downstream else "upstream"
        step = pipeline.store.downstream if args.downstream else pipeline.store.upstream
        root = pipeline.store.find_materialization(
            pipeline.name, pipeline.dag[args.asset].name, encode_partition(key)
        )
        tree = lineage_tree(root, step, args.recursive) if root is not None else []
        depth: dict[str, int] = {}
        for level, m, _ in tree:
            depth.setdefault(m.id, level)
        if args.json:
            print_json(
                {
                    "asset": args.asset,
                    "partition": key_text(key),
                    "direction": direction,
                    "recursive": args.recursive,
                    "materializations": [
                        {**materialization_json(m), "depth": depth.get(m.id, 1)} for m in records
                    ],
                }
            )
        elif not records:
            print(f"{args.asset!r} has no {direction} materializations")
        else:
            rows = [
                (
                    prefix + m.asset + (" (shown above)" if repeated else ""),
                    m.partition,
                    m.state,
                    m.id,
                    m.run_id,
                    m.finished_at,
                )
                for prefix, m, repeated in tree_rows(tree)
            ]
            print(f"{direction} of {args.asset!r}" + (" (tree):" if args.recursive else ":"))
            print(
                table(("ASSET", "PARTITION", "STATE", "MATERIALIZATION", "RUN", "FINISHED"), rows)
            )
        return EXIT_OK


def lineage_tree(
    root: MaterializationRecord,
    step: Callable[[str], Sequence[MaterializationRecord]],
    recursive: bool,
) -> list[tuple[int, MaterializationRecord, bool]]:
    """Depth-first ``(depth, record, repeated)`` from ``root``; the root is depth 0.

    A record reached a second time (a diamond in the graph) is listed as repeated and not
    expanded again, so the tree stays as large as the lineage itself.
    """
    out: list[tuple[int, MaterializationRecord, bool]] = [(0, root, False)]
    expanded = {root.id}
    stack = [(1, m) for m in reversed(step(root.id))]
    while stack:
        level, m = stack.pop()
        repeated = m.id in expanded
        out.append((level, m, repeated))
        if recursive and not repeated:
            expanded.add(m.id)
            stack.extend((level + 1, child) for child in reversed(step(m.id)))
    return out


def tree_rows(
    tree: Sequence[tuple[int, MaterializationRecord, bool]],
) -> list[tuple[str, MaterializationRecord, bool]]:
    """Tree prefixes (``├─ ``, ``│  └─ ``) for the ASSET column of :func:`lineage_tree`."""
    rows: list[tuple[str, MaterializationRecord, bool]] = []
    for i, (level, m, repeated) in enumerate(tree):
        if level == 0:
            rows.append(("", m, repeated))
            continue
        parts = []
        for outer in range(1, level):
            parts.append("│  " if _more_at(tree, i, outer) else "   ")
        parts.append("├─ " if _more_at(tree, i, level) else "└─ ")
        rows.append(("".join(parts), m, repeated))
    return rows


def _more_at(tree: Sequence[tuple[int, MaterializationRecord, bool]], i: int, level: int) -> bool:
    """Whether another node of ``level`` follows row ``i`` before the tree climbs above it."""
    for later, _, _ in tree[i + 1 :]:
        if later < level:
            return False
        if later == level:
            return True
    return False
