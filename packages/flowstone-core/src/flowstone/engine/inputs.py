"""Resolving a step's inputs from the materialization records of its own run.

Readiness and values come from this run's steps (or the records they reuse), never from
"a value exists in storage". A step's inputs are read in batches, not one dependency at a
time: one ``get_step_results`` (steps with their records) for every dependency step this
process did not finish itself, one ``load_many`` per IO manager (see
:meth:`~flowstone.engine.values.ValueLayer.load_many`). A join over three branches
costs at most two round trips, not nine; none for records a continuation's ``finish_step``
sent along (the runner keeps them with the ones it recorded itself), and no load for the
values it sent along or staged itself (see :mod:`flowstone.engine.prefetch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from flowstone.engine.plan import dep_partitions
from flowstone.partitions import AllPartitions, PartitionKey, encode_partition

if TYPE_CHECKING:
    from flowstone.asset import AssetDef
    from flowstone.engine.runner import StepRunner
    from flowstone.records import MaterializationRecord, StepRecord

__all__ = ["DepOutcome", "Inputs", "resolve_inputs"]

_FAILED_STATES = frozenset({"failed", "upstream_failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class DepOutcome:
    """How one dependency ended in this run.

    ``materialization_ids`` are the records the step read (or, for a failed dependency,
    the failure records it saw), one per dependency partition.
    """

    state: Literal["succeeded", "skipped", "failed", "absent"]
    value: Any = None
    detail: str = ""
    materialization_ids: tuple[str, ...] = ()


@dataclass(slots=True)
class Inputs:
    outcomes: dict[str, DepOutcome] = field(default_factory=dict)
    upstream_ids: list[str] = field(default_factory=list)


def resolve_inputs(
    runner: StepRunner, run_id: str, a: AssetDef, key: PartitionKey | None
) -> Inputs:
    """Load every upstream value ``a`` needs at ``key`` (deps, router, branch finals)."""
    graph = runner.runtime.graph
    plan = [
        (dep, [(uk, encode_partition(uk)) for uk in dep_partitions(graph, a, dep, key)])
        for dep in a.upstream
    ]
    mats = _materializations(runner, run_id, plan)
    values = _values(runner, mats)
    inputs = Inputs()
    for dep, keys in plan:
        multi = isinstance(a.partition_mappings.get(dep), AllPartitions) or len(keys) > 1
        loaded: dict[Any, Any] = {}
        ids: list[str] = []
        failed = ""
        skipped = ""
        for uk, enc in keys:
            found = mats.get((dep, enc))
            if isinstance(found, str):  # why this partition cannot be read
                failed = failed or found
                continue
            step, mat = found if found is not None else (None, None)
            if mat is not None:
                ids.append(mat.id)
                loaded[uk] = values[mat.id]
            elif step is None or step.state in _FAILED_STATES:
                failed = failed or (
                    f"{dep}[{enc}] {step.state if step else 'missing'}"
                    + (f": {step.error}" if step and step.error else "")
                )
                if step is not None and step.materialization_id:
                    # a join that tolerates this failure records what it saw
                    ids.append(step.materialization_id)
            elif step.state == "skipped":
                skipped = skipped or (step.error or f"{dep} was skipped")
            else:
                failed = failed or f"{dep}[{enc}] is {step.state}, not finished"
        inputs.upstream_ids.extend(ids)
        mids = tuple(ids)
        if failed:
            inputs.outcomes[dep] = DepOutcome("failed", detail=failed, materialization_ids=mids)
        elif multi:
            inputs.outcomes[dep] = DepOutcome("succeeded", loaded, materialization_ids=mids)
        elif loaded:
            only = next(iter(loaded.values()))
            inputs.outcomes[dep] = DepOutcome("succeeded", only, materialization_ids=mids)
        elif skipped:
            inputs.outcomes[dep] = DepOutcome("skipped", detail=skipped)
        else:
            inputs.outcomes[dep] = DepOutcome("absent", detail=f"no partition of {dep} applies")
    return inputs


_Found = tuple["StepRecord | None", "MaterializationRecord | None"] | str


def _materializations(
    runner: StepRunner, run_id: str, plan: list[tuple[str, list[tuple[Any, str]]]]
) -> dict[tuple[str, str], _Found]:
    """``{(dep, partition): (step, succeeded record) | reason it cannot be read}``.

    Steps this process saw succeed come from its cache; the rest in one
    ``get_step_results``.
    """
    found: dict[tuple[str, str], _Found] = {}
    missing: list[tuple[str, str]] = []
    for dep, keys in plan:
        for _, enc in keys:
            known = runner.succeeded(run_id, dep, enc)
            if known is not None:  # finished by this process: no need to ask the store
                found[(dep, enc)] = (None, known)
            else:
                missing.append((dep, enc))
    if not missing:
        return found
    results = runner.runtime.store.get_step_results(run_id, missing)
    steps = {(s.asset, s.partition): (s, m) for s, m in results}
    for k in missing:
        step, mat = steps.get(k, (None, None))
        found[k] = (step, None)
        if step is None or step.state != "succeeded":
            continue
        if step.materialization_id is None:
            found[k] = f"{k[0]}[{k[1]}] is {step.state}, not finished"
        elif mat is None:
            found[k] = f"{k[0]}[{k[1]}] materialization {step.materialization_id} is gone"
        else:
            found[k] = (step, mat)
    return found


def _values(runner: StepRunner, found: dict[tuple[str, str], _Found]) -> dict[str, Any]:
    """The stored value of every succeeded record in ``found``, keyed by record id."""
    layer = runner.runtime.values
    mats = {f[1].id: f[1] for f in found.values() if not isinstance(f, str) and f[1] is not None}
    values = runner.prefetched.take(layer, list(mats.values()))  # a continuation's
    rest = [m for m in mats.values() if m.id not in values]
    loaded = layer.load_many(rest)
    values.update(zip((m.id for m in rest), loaded, strict=True))
    return values
