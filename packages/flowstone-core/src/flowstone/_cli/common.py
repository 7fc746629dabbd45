"""What every command shares: exit codes, loading the pipeline, reading partitions."""

from __future__ import annotations

import argparse
import inspect
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from flowstone.errors import (
    ApprovalError,
    DefinitionError,
    FlowStoneError,
    PartitionError,
    PluginError,
    RunNotFoundError,
    SignalError,
    UsageError,
)
from flowstone.loading import load_pipeline
from flowstone.partitions import PartitionKey, PartitionSet, encode_partition, parse_partition

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "Subparsers",
    "add_json",
    "add_partition",
    "add_spec",
    "common_parent",
    "exit_code_for",
    "key_text",
    "open_pipeline",
    "partition_of",
    "partition_set_of",
    "partition_to_read",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # an asset or run failed, a health check failed
EXIT_USAGE = 2  # bad arguments, a definition error, an unknown run/approval/token

# Errors that mean "what you asked for is wrong", not "something failed while running".
_USAGE_ERRORS = (
    DefinitionError,
    UsageError,
    PartitionError,
    PluginError,
    ApprovalError,
    SignalError,
    RunNotFoundError,
)


class Subparsers(Protocol):
    """The object ``ArgumentParser.add_subparsers()`` returns (what plugins receive)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def exit_code_for(exc: FlowStoneError) -> int:
    """2 for usage/definition/lookup errors, 1 for failures while running or reading."""
    return EXIT_USAGE if isinstance(exc, _USAGE_ERRORS) else EXIT_FAILURE


def common_parent() -> argparse.ArgumentParser:
    """Options every core subcommand accepts after its name too (``run ... --debug``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error",
    )
    # -v/-q are accepted after the subcommand too; main() adds them to the global ones
    parent.add_argument(
        "-v",
        "--verbose",
        dest="sub_verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="log more (-v info, -vv debug) to stderr",
    )
    parent.add_argument(
        "-q",
        "--quiet",
        dest="sub_quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log only errors",
    )
    return parent


def add_spec(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "spec",
        metavar="FILE_OR_MODULE:PIPELINE",
        help="the pipeline: path/to/file.py:NAME or package.module:NAME (NAME defaults to "
        "'pipeline')",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def add_partition(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    parser.add_argument(
        "--partition",
        "-p",
        metavar="P",
        help=help_text
        or "partition key as text, read by the asset's partition set (e.g. 2024-01-05)",
    )


@contextmanager
def open_pipeline(spec: str) -> Iterator[Pipeline]:
    """Load the pipeline ``spec`` names; close it (resources, store) when the command ends.

    Anything the user's file raises while it is imported (a syntax error, a failing
    import) is a definition problem: it becomes a :class:`UsageError` (exit 2) that keeps
    the original as its cause for ``--debug``.
    """
    try:
        pipeline = load_pipeline(spec)
    except FlowStoneError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot load pipeline {spec!r}: {type(exc).__name__}: {exc}") from exc
    try:
        yield pipeline
    finally:
        pipeline.close()


def partition_set_of(pipeline: Pipeline, assets: Sequence[str]) -> PartitionSet | None:
    """The partition set that reads ``--partition`` text: the first target that has one."""
    names = list(assets) or list(pipeline.dag.order)
    for name in names:
        declared: PartitionSet | None = pipeline.dag[name].partitions
        if declared is not None:
            return declared
    return None


def partition_of(
    pipeline: Pipeline, assets: Sequence[str], text: str | None
) -> PartitionKey | None:
    """Parse ``--partition`` text for ``assets`` (None when no partition was given).

    Raises:
        UsageError: a partition was given, but nothing the assets need is partitioned:
            none declares ``partitions=`` and none reads ``context.partition``.
    """
    if text is None:
        return None
    partitions = partition_set_of(pipeline, assets)
    if partitions is None:
        _refuse_pointless_partition(pipeline, assets, text)
    return parse_partition(text, partitions)


def _refuse_pointless_partition(pipeline: Pipeline, assets: Sequence[str], text: str) -> None:
    """An asset without a partition set takes any key (dynamic partitions), but only an
    asset that reads ``context.partition`` (or has a partitioned upstream) can use one."""
    needed = pipeline.dag.upstream_closure(list(assets) or list(pipeline.dag.order))
    defs = [pipeline.dag[name] for name in needed]
    if any(a.partitions is not None or _reads_partition(a) for a in defs):
        return
    shown = ", ".join(repr(a.name) for a in defs[:6]) + (", ..." if len(defs) > 6 else "")
    raise UsageError(
        f"--partition {text!r} given, but {shown} "
        f"{'is' if len(defs) == 1 else 'are'} not partitioned: no partitions= and no "
        "context.partition read, so the partition would only file the same values under "
        "another key. Fix: drop --partition, or declare partitions=... on the asset (an "
        "asset that reads context.partition takes any key)."
    )


def _reads_partition(asset: Any) -> bool:
    """Whether the asset's function (or a signal handler) mentions ``.partition``."""
    functions = (asset.fn, asset.on_signal, asset.on_timeout)
    return any(_mentions(fn, "partition") for fn in functions if fn is not None)


def _mentions(fn: Any, name: str) -> bool:
    code = getattr(inspect.unwrap(fn), "__code__", None)
    pending = [code] if isinstance(code, types.CodeType) else []
    while pending:
        current = pending.pop()
        if name in current.co_names:
            return True
        pending.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    # not plain Python code (a builtin, a C extension, a callable object): assume it does
    return code is None


def partition_to_read(pipeline: Pipeline, asset: str, text: str | None) -> PartitionKey | None:
    """``--partition`` for a command reading one asset; a partitioned asset needs one."""
    declared = pipeline.dag[asset].partitions
    if text is None and declared is not None:
        raise UsageError(
            f"asset {asset!r} is partitioned ({declared!r}); say which partition with --partition P"
        )
    return partition_of(pipeline, [asset], text)


def key_text(key: PartitionKey | None) -> str | None:
    """A typed key as its encoded text (what ``--partition`` accepts back)."""
    return None if key is None else encode_partition(key)
