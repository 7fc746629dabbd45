"""``RunResult``: what ``pipeline.run`` (and approve/reject/signal) hand back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flowstone.errors import AssetFailedError, ExecutionError, UsageError
from flowstone.partitions import decode_partition
from flowstone.records import Approval, MaterializationRecord, RunRecord, StepRecord

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline
    from flowstone.protocols import RunStore

__all__ = ["RunResult", "wait_for_run"]

_SETTLED = frozenset({"waiting", "succeeded", "failed", "cancelled"})


def wait_for_run(
    store: RunStore,
    run_id: str,
    *,
    timeout: float | None,
    deferred_assets: frozenset[str] = frozenset(),
) -> RunRecord:
    """Poll the store until the run leaves ``running`` (or ``timeout`` seconds pass).

    A run ``waiting`` only on steps of ``deferred_assets`` (scatter steps whose items run
    on workers) is still making progress by itself, so it is not settled."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.01
    while True:
        run = store.get_run(run_id)
        if run is None:
            raise UsageError(f"no run {run_id!r}")
        if run.status in _SETTLED and not (
            run.status == "waiting"
            and deferred_assets
            and all(
                s.asset in deferred_assets for s in store.list_steps(run_id) if s.state == "waiting"
            )
        ):
            return run
        if deadline is not None and time.monotonic() >= deadline:
            return run
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


class RunResult:
    """The state of one run.

    Attributes:
        run_id, status, targets, partition (typed), error.
        materializations: records of this run plus the reused ones its targets read.
    """

    __slots__ = ("_cache", "_pipeline", "_steps", "run")

    def __init__(self, pipeline: Pipeline, run: RunRecord) -> None:
        self._pipeline = pipeline
        self.run = run
        self._steps: list[StepRecord] | None = None
        self._cache: dict[str, Any] = {}

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def ok(self) -> bool:
        return self.run.status == "succeeded"

    @property
    def targets(self) -> tuple[str, ...]:
        return self.run.targets

    @property
    def partition(self) -> Any:
        return decode_partition(self.run.partition)

    @property
    def steps(self) -> list[StepRecord]:
        if self._steps is None:
            self._steps = self._pipeline.store.list_steps(self.run_id)
        return self._steps

    @property
    def error(self) -> str | None:
        if self.run.error:
            return self.run.error
        failed = [s for s in self.steps if s.state == "failed"]
        if failed:
            return "; ".join(f"asset {s.asset!r} failed: {s.error}" for s in failed)
        blocked = [s for s in self.steps if s.state == "upstream_failed"]
        if blocked:
            return f"asset {blocked[0].asset!r}: {blocked[0].error}"
        return None

    @property
    def materializations(self) -> list[MaterializationRecord]:
        if "mats" not in self._cache:
            store = self._pipeline.store
            ids = [s.materialization_id for s in self.steps if s.materialization_id]
            mats = [m for m in (store.get_materialization(i) for i in ids) if m is not None]
            self._cache["mats"] = mats
        return list(self._cache["mats"])

    def approvals(self) -> list[Approval]:
        """Pending approvals this run is waiting for."""
        store = self._pipeline.store
        out = []
        for s in self.steps:
            if s.state == "waiting":
                a = store.find_approval(self.run_id, s.asset, s.partition)
                if a is not None and a.status == "pending":
                    out.append(a)
        return out

    @property
    def value(self) -> Any:
        """The target's value (a dict by asset name for several targets).

        Raises:
            ExecutionError: the run did not succeed (the message says why: failed asset,
                pending approval ids, ...).
        """
        if "value" in self._cache:
            return self._cache["value"]
        by_asset: dict[str, StepRecord] = {}
        for s in self.steps:
            if s.asset in self.targets and (
                s.asset not in by_asset or s.partition == self.run.partition
            ):
                by_asset[s.asset] = s
        # a tolerated failure (a partial-mode branch) fails the run but not the target
        if self.status in ("running", "waiting") or any(
            by_asset.get(t) is None or by_asset[t].state != "succeeded" for t in self.targets
        ):
            raise self._not_succeeded()
        store = self._pipeline.store
        values: dict[str, Any] = {}
        for t in self.targets:
            mid = by_asset[t].materialization_id
            mat = store.get_materialization(mid) if mid else None
            values[t] = self._pipeline.load_materialization(mat) if mat is not None else None
        result = values[self.targets[0]] if len(self.targets) == 1 else values
        self._cache["value"] = result
        return result

    def _not_succeeded(self) -> ExecutionError:
        if self.status == "waiting":
            pending = self.approvals()
            what = (
                "approvals " + ", ".join(str(a.id) for a in pending) if pending else "a signal gate"
            )
            return ExecutionError(
                f"run {self.run_id} is waiting for {what}; approve/signal it to continue"
            )
        if self.status == "failed":
            failed = next((s for s in self.steps if s.state == "failed"), None)
            return AssetFailedError(
                f"run {self.run_id} failed: {self.error}", asset=failed.asset if failed else None
            )
        return ExecutionError(f"run {self.run_id} is {self.status}: {self.error or 'no value'}")

    def raise_for_status(self) -> RunResult:
        """Raise unless the run succeeded; returns self for chaining."""
        if self.status != "succeeded":
            raise self._not_succeeded()
        return self

    def to_dict(self, *, include_value: bool = True) -> dict[str, Any]:
        """A JSON-friendly summary (what ``flowstone run --json`` prints)."""
        run_mats = {m.id: m for m in self.materializations}
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "pipeline": self.run.pipeline,
            "status": self.status,
            "partition": self.run.partition or None,
            "targets": list(self.targets),
            "error": self.error,
            "value": None,
            "materializations": [
                {
                    "id": m.id,
                    "asset": m.asset,
                    "partition": m.partition or None,
                    "state": m.state,
                    "reused": m.run_id != self.run_id,
                    "attempt": m.attempt,
                    "error": m.error,
                    "upstream": list(m.upstream),
                }
                for m in run_mats.values()
            ],
        }
        if include_value:
            try:
                out["value"] = self.value
            except ExecutionError:
                out["value"] = None
        if self.status == "waiting":
            out["approvals"] = [
                {"id": a.id, "asset": a.asset, "message": a.message} for a in self.approvals()
            ]
        return out

    def __repr__(self) -> str:
        return f"RunResult(run_id={self.run_id!r}, status={self.status!r})"
