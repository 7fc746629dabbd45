"""Test helpers: run one asset in isolation, in-memory pipelines, and the contract suites
that plugins subclass.

* :func:`materialize` — run one asset with given dependency values through the real engine.
* :func:`memory_pipeline` — a Pipeline on the memory store and memory IO manager.
* :class:`ParkedExecutor` — a queue-like executor that keeps the steps it is handed, so a
  test delivers them itself (``pipeline.runner.run_step(...).steps``), in the order it wants.
* ``IOManagerContract`` (:mod:`flowstone.testing.io_contract`), ``RunStoreContract``
  (:mod:`flowstone.testing.store_contract`), ``ItemReaderContract``
  (:mod:`flowstone.testing.reader_contract`) — pytest suites; imported lazily because they
  need pytest, which the core does not depend on.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from flowstone.asset import AssetDef, asset
from flowstone.errors import UsageError
from flowstone.partitions import PartitionKey
from flowstone.pipeline import Pipeline
from flowstone.records import StepRecord

if TYPE_CHECKING:
    from flowstone.engine import StepRunner

__all__ = [
    "IOManagerContract",
    "ItemReaderContract",
    "ParkedExecutor",
    "RunStoreContract",
    "materialize",
    "memory_pipeline",
]

_CONTRACTS = {
    "IOManagerContract": "flowstone.testing.io_contract",
    "RunStoreContract": "flowstone.testing.store_contract",
    "ItemReaderContract": "flowstone.testing.reader_contract",
}


def __getattr__(name: str) -> Any:
    if name in _CONTRACTS:
        return getattr(importlib.import_module(_CONTRACTS[name]), name)
    raise AttributeError(f"module 'flowstone.testing' has no attribute {name!r}")


class ParkedExecutor:
    """A non-blocking executor that only keeps what it is handed, like a broker nobody
    consumes: ``run(..., wait=False)`` returns with the ready steps in :attr:`sent`."""

    name, blocking = "parked", False

    def __init__(self) -> None:
        self.sent: list[StepRecord] = []

    def dispatch(self, runner: StepRunner, run_id: str, steps: Iterable[StepRecord]) -> None:
        self.sent.extend(steps)

    def take(self) -> list[StepRecord]:
        """The steps handed over so far (and forget them)."""
        out, self.sent = self.sent, []
        return out

    def close(self) -> None:
        return None


def memory_pipeline(name: str, assets: Iterable[AssetDef], **kwargs: Any) -> Pipeline:
    """A Pipeline whose runs and values live in memory (nothing touches disk)."""
    kwargs.setdefault("store", "memory://")
    kwargs.setdefault("executor", "inprocess")
    return Pipeline(name, assets, **kwargs)


def _source(name: str, value: Any) -> AssetDef:
    def produce() -> Any:
        return value

    return asset(name=name)(produce)


def materialize(
    target: AssetDef,
    *,
    deps: Mapping[str, Any] | None = None,
    partition: PartitionKey | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Any:
    """Run ``target`` once with the given dependency values and return its value.

    The asset runs through the real engine (context, resources, retries, scatter,
    parallel join, codec), so what passes here passes in a pipeline. Give every
    dependency (and, for a parallel asset, every branch final) a value in ``deps``.

    Example:
        >>> materialize(doubled, deps={"numbers": [1, 2]})
        [2, 4]
    """
    if not isinstance(target, AssetDef):
        raise UsageError(f"materialize() takes an @asset, got {type(target).__name__}")
    given = dict(deps or {})
    needed = [d for d in target.upstream if d != target.routed_from]
    missing = [d for d in needed if d not in given and d not in target.optional_deps]
    if missing:
        raise UsageError(f"materialize({target.name}): give values for deps {missing}")
    kept = tuple(d for d in target.deps if d in given or d not in target.optional_deps)
    alone = dataclasses.replace(
        target, deps=kept, routed_from=None, partitions=None, partition_mappings={}
    )
    sources = [_source(name, value) for name, value in given.items()]
    pipeline = memory_pipeline(f"test_{target.name}", [alone, *sources], resources=resources)
    try:
        return pipeline.run(target.name, partition).raise_for_status().value
    finally:
        pipeline.close()
