"""Resolving a step's inputs from the materialization records of its own run.

Readiness and values come from this run's steps (or the records they reuse), never from
"a value exists in storage".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from flowstone.engine.plan import dep_partitions
from flowstone.partitions import AllPartitions, PartitionKey, encode_partition

if TYPE_CHECKING:
    from flowstone.asset import AssetDef
    from flowstone.pipeline import Pipeline

__all__ = ["DepOutcome", "Inputs", "resolve_inputs"]

_FAILED_STATES = frozenset({"failed", "upstream_failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class DepOutcome:
    """How one dependency ended in this run."""

    state: Literal["succeeded", "skipped", "failed", "absent"]
    value: Any = None
    detail: str = ""


@dataclass(slots=True)
class Inputs:
    outcomes: dict[str, DepOutcome] = field(default_factory=dict)
    upstream_ids: list[str] = field(default_factory=list)


def resolve_inputs(
    pipeline: Pipeline, run_id: str, a: AssetDef, key: PartitionKey | None
) -> Inputs:
    """Load every upstream value ``a`` needs at ``key`` (deps, router, branch finals)."""
    store = pipeline.store
    inputs = Inputs()
    for dep in a.upstream:
        keys = dep_partitions(pipeline.dag, a, dep, key)
        multi = isinstance(a.partition_mappings.get(dep), AllPartitions) or len(keys) > 1
        values: dict[Any, Any] = {}
        failed = ""
        skipped = ""
        for uk in keys:
            enc = encode_partition(uk)
            known = pipeline.runner.succeeded(run_id, dep, enc)
            if known is not None:  # finished by this process: no need to ask the store
                inputs.upstream_ids.append(known.id)
                values[uk] = pipeline.load_materialization(known, run_id=run_id)
                continue
            step = store.get_step(run_id, dep, enc)
            if step is None or step.state in _FAILED_STATES:
                failed = failed or (
                    f"{dep}[{enc}] {step.state if step else 'missing'}"
                    + (f": {step.error}" if step and step.error else "")
                )
                if step is not None and step.materialization_id:
                    # a join that tolerates this failure records what it saw
                    inputs.upstream_ids.append(step.materialization_id)
                continue
            if step.state == "skipped":
                skipped = skipped or (step.error or f"{dep} was skipped")
                continue
            if step.state != "succeeded" or step.materialization_id is None:
                failed = failed or f"{dep}[{enc}] is {step.state}, not finished"
                continue
            mat = pipeline.runner.materialization(step.materialization_id)
            if mat is None:
                failed = failed or f"{dep}[{enc}] materialization {step.materialization_id} is gone"
                continue
            inputs.upstream_ids.append(mat.id)
            values[uk] = pipeline.load_materialization(mat, run_id=run_id)
        if failed:
            inputs.outcomes[dep] = DepOutcome("failed", detail=failed)
        elif multi:
            inputs.outcomes[dep] = DepOutcome("succeeded", values)
        elif values:
            inputs.outcomes[dep] = DepOutcome("succeeded", next(iter(values.values())))
        elif skipped:
            inputs.outcomes[dep] = DepOutcome("skipped", detail=skipped)
        else:
            inputs.outcomes[dep] = DepOutcome("absent", detail=f"no partition of {dep} applies")
    return inputs
