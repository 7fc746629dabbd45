"""Planning a run: which (asset, partition) steps are needed, and which are reused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flowstone.asset import AssetDef
from flowstone.dag import AssetGraph
from flowstone.errors import PartitionError, UsageError
from flowstone.partitions import IdentityMapping, PartitionKey, encode_partition
from flowstone.protocols import RunStore
from flowstone.records import StepSpec

__all__ = ["Planner", "dep_partitions", "validate_key"]

_IDENTITY = IdentityMapping()


def validate_key(a: AssetDef, key: PartitionKey | None) -> PartitionKey | None:
    """Check ``key`` against the asset's partition set (if it declares one)."""
    if a.partitions is None:
        return key
    if key is None:
        raise PartitionError(
            f"asset {a.name!r} is partitioned by {a.partitions!r}; pass partition=... "
            "(e.g. --partition 2024-01-31 on the CLI)"
        )
    try:
        return a.partitions.validate(key)  # type: ignore[no-any-return]
    except PartitionError as exc:  # say which asset's set rejected the key
        raise PartitionError(f"asset {a.name!r}: {exc}") from exc


def dep_partitions(
    graph: AssetGraph, a: AssetDef, dep: str, key: PartitionKey | None
) -> list[PartitionKey | None]:
    """The upstream partitions of ``dep`` that ``a`` at ``key`` reads (outside-the-set keys
    are dropped: e.g. "yesterday" of the first day of a daily set)."""
    upstream = graph[dep]
    mapping = a.partition_mappings.get(dep, _IDENTITY)
    keys = mapping.upstream_keys(key, upstream.partitions)
    if upstream.partitions is None:
        return list(keys)
    return [k for k in keys if k is not None and upstream.partitions.contains(k)]


@dataclass(slots=True)
class Planner:
    """Builds the step list for :meth:`RunStore.create_run`.

    Walks from the targets through their dependencies. A step whose asset already has a
    succeeded materialization for that partition is reused (created ``succeeded``) and its
    own dependencies are not planned, unless ``force`` is set. With ``with_deps=False``
    only the targets run and every dependency must already be materialized.
    """

    graph: AssetGraph
    store: RunStore
    pipeline: str

    def plan(
        self,
        targets: Sequence[str],
        key: PartitionKey | None,
        *,
        force: bool,
        with_deps: bool,
    ) -> list[StepSpec]:
        specs: dict[tuple[str, str], StepSpec] = {}
        target_set = set(targets)
        stack: list[tuple[str, PartitionKey | None]] = [
            (t, validate_key(self.graph[t], key)) for t in targets
        ]
        while stack:
            name, k = stack.pop()
            enc = encode_partition(k)
            if (name, enc) in specs:
                continue
            a = self.graph[name]
            is_target = name in target_set
            if not force or (not with_deps and not is_target):
                reused = self.store.find_materialization(self.pipeline, name, enc)
                if reused is not None:
                    specs[(name, enc)] = StepSpec(
                        asset=name,
                        partition=enc,
                        state="succeeded",
                        reused_materialization_id=reused.id,
                    )
                    continue
            if not with_deps and not is_target:
                raise UsageError(
                    f"asset {name!r} (partition {enc or 'none'}) has no materialization to reuse "
                    "and with_deps=False; run it first or drop with_deps=False"
                )
            deps: list[tuple[str, str]] = []
            for dep in a.upstream:
                up_keys = self._upstream_keys(a, dep, k)
                for uk in up_keys:
                    deps.append((dep, encode_partition(uk)))
                    stack.append((dep, uk))
            specs[(name, enc)] = StepSpec(asset=name, partition=enc, deps=tuple(deps))
        order = {n: i for i, n in enumerate(self.graph.order)}
        return sorted(specs.values(), key=lambda s: (order[s.asset], s.partition))

    def _upstream_keys(self, a: AssetDef, dep: str, k: PartitionKey | None) -> list[Any]:
        keys = dep_partitions(self.graph, a, dep, k)
        if not keys and dep not in a.optional_deps:
            raise PartitionError(
                f"asset {a.name!r} at partition {encode_partition(k) or 'none'} needs {dep!r}, but "
                f"its partition mapping selects no partition of {dep!r} inside "
                f"{self.graph[dep].partitions!r}; make {dep!r} an optional dep or choose a "
                "later partition"
            )
        for uk in keys:
            validate_key(self.graph[dep], uk)
        return keys
