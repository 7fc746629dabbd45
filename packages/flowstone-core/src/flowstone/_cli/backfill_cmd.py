"""``backfill``: one run per partition, with live progress on stderr and a summary."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TextIO

from flowstone._cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Subparsers,
    add_json,
    add_spec,
    key_text,
    open_pipeline,
    partition_set_of,
)
from flowstone._cli.output import print_json, table
from flowstone.backfill import BackfillProgress, BackfillResult
from flowstone.errors import UsageError
from flowstone.partitions import PartitionKey, parse_partition

__all__ = ["Progress", "register"]

# Without a terminal, a line every tenth of the way (and every failure) keeps logs short.
_PLAIN_STEPS = 10


def register(sub: Subparsers, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "backfill",
        parents=[parent],
        help="run an asset for many partitions",
        description="Run ASSET once per partition: its whole partition set, --start..--end "
        "of it, or the keys of --partitions/--partition. Progress goes to stderr (one "
        "updating line on a terminal). Partitions that already have a value are skipped "
        "unless --force or --no-skip-existing. Exits 1 when any partition failed.",
    )
    add_spec(p)
    p.add_argument("asset", metavar="ASSET")
    p.add_argument("--start", metavar="P", help="first partition (of the asset's set)")
    p.add_argument("--end", metavar="P", help="last partition, inclusive")
    p.add_argument("--partitions", metavar="P1,P2,...", help="comma-separated keys")
    p.add_argument(
        "--partition",
        "-p",
        action="append",
        default=[],
        metavar="P",
        help="one key (repeatable; for keys that contain a comma)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=4,
        metavar="N",
        help="partitions in flight at once (default 4, capped at 2 x CPUs)",
    )
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="per-partition timeout (default 1800)"
    )
    p.add_argument("--force", action="store_true", help="recompute every partition")
    p.add_argument(
        "--no-skip-existing",
        action="store_true",
        help="run partitions that already have a value (reusing it)",
    )
    add_json(p)
    p.set_defaults(func=cmd_backfill, asset_logs=True)


class Progress:
    """Shows backfill progress on ``stream``: one rewritten line on a TTY, else lines."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._width = 0
        self._counts = {"succeeded": 0, "failed": 0, "skipped": 0}
        self._started = time.monotonic()

    def __call__(self, p: BackfillProgress) -> None:
        self._counts[p.status] = self._counts.get(p.status, 0) + 1
        counts = ", ".join(f"{n} {k}" for k, n in self._counts.items())
        elapsed = time.monotonic() - self._started
        line = f"backfill {p.done}/{p.total} ({counts}) {elapsed:.1f}s"
        if self._tty:
            last = f" last: {key_text(p.partition)} {p.status}"
            text = line + last
            self._stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            if p.status == "failed":
                self._stream.write(f"\n  {key_text(p.partition)} failed: {p.error}\n")
                self._width = 0
        else:
            if p.status == "failed":
                self._stream.write(f"  {key_text(p.partition)} failed: {p.error}\n")
            step = max(1, p.total // _PLAIN_STEPS)
            if p.done % step == 0 or p.done == p.total:
                self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()


def _keys(
    args: argparse.Namespace, parse: Callable[[str], PartitionKey]
) -> list[PartitionKey] | None:
    texts = list(args.partition)
    if args.partitions is not None:
        texts += [t.strip() for t in args.partitions.split(",") if t.strip()]
        if not texts:
            raise UsageError("--partitions is empty; give keys like 2024-01-01,2024-01-02")
    if not texts:
        return None
    if args.start is not None or args.end is not None:
        raise UsageError("use either --start/--end or --partitions/--partition, not both")
    return [parse(t) for t in texts]


def cmd_backfill(args: argparse.Namespace) -> int:
    if args.parallel < 1:
        raise UsageError(f"--parallel must be at least 1, got {args.parallel}")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    with open_pipeline(args.spec) as pipeline:
        declared = partition_set_of(pipeline, [args.asset])

        def parse(text: str) -> PartitionKey:
            return parse_partition(text, declared)

        keys = _keys(args, parse)
        progress = Progress(sys.stderr)
        extra = {} if args.timeout is None else {"timeout": args.timeout}
        try:
            result = pipeline.backfill(
                args.asset,
                keys,
                start=parse(args.start) if args.start is not None else None,
                end=parse(args.end) if args.end is not None else None,
                parallel=args.parallel,
                skip_existing=not args.no_skip_existing,
                force=args.force,
                progress=progress,
                **extra,
            )
        finally:
            progress.finish()
        if args.json:
            print_json(_summary_json(result))
        else:
            _print_summary(result)
        return EXIT_OK if result.ok else EXIT_FAILURE


def _summary_json(result: BackfillResult) -> dict[str, object]:
    return {
        "ok": result.ok,
        "succeeded": [key_text(k) for k in result.succeeded],
        "failed": [key_text(k) for k in result.failed],
        "skipped": [key_text(k) for k in result.skipped],
        "errors": dict(result.errors),
        "run_ids": dict(result.run_ids),
        "parallel": result.parallel,
        "seconds": round(result.seconds, 3),
    }


def _print_summary(result: BackfillResult) -> None:
    print(result.summary())
    if result.failed:
        rows = []
        for k in result.failed:
            text = key_text(k) or ""
            rows.append((text, result.run_ids.get(text), result.errors.get(text)))
        print(table(("FAILED PARTITION", "RUN", "ERROR"), rows))
