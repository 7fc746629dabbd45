"""What a run is doing, as a user reads it: a run whose only waits are deferred scatters
or parallel joins (work continuing on workers, nobody to ask) is ``running``, with the
scatter's progress; ``waiting`` is kept for runs that need a human or a signal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowstone.records import RunRecord
from flowstone.run_outcome import PartialFailure, partial_failures
from flowstone.scatter import ScatterCounts, ScatterProgress

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline

__all__ = ["RunView", "list_run_views", "run_view"]


@dataclass(frozen=True, slots=True)
class RunView:
    """A run as ``flowstone runs`` shows it.

    Attributes:
        run: the stored record.
        status: ``running`` for a run that only waits on deferred work, else the stored one.
        scatters: (asset, partition, counts or None) of each deferred scatter under way.
        partial_failures: what failed although the run succeeded
            (:mod:`flowstone.run_outcome`; a run stored ``failed`` whose targets all
            succeeded shows as ``succeeded``).
    """

    run: RunRecord
    status: str
    scatters: tuple[tuple[str, str, ScatterCounts | None], ...] = ()
    partial_failures: tuple[PartialFailure, ...] = ()

    def progress_text(self) -> str | None:
        """``scatter 'fetch': 1,200/10,000 items``, one part per scatter; for a run that
        succeeded with tolerated failures, which assets failed."""
        parts = [
            f"scatter {asset!r}: " + (counts.text() if counts else "under way")
            for asset, _, counts in self.scatters
        ]
        if self.partial_failures:
            names = ", ".join(dict.fromkeys(f.asset for f in self.partial_failures))
            parts.append(f"partial: tolerated failures in {names}")
        return "; ".join(parts) or None


def run_view(pipeline: Pipeline, run: RunRecord) -> RunView:
    """How ``run`` reads to a user (one store read of its steps when it is waiting or
    failed, or succeeded in a pipeline with scatters)."""
    if run.status == "failed" or (run.status == "succeeded" and _has_scatters(pipeline)):
        steps = pipeline.store.list_steps(run.run_id)
        partial = partial_failures(pipeline, run, steps)
        return RunView(run, "succeeded" if partial else run.status, partial_failures=partial)
    if run.status != "waiting":
        return RunView(run, run.status)
    waiting = [s for s in pipeline.store.list_steps(run.run_id) if s.state == "waiting"]
    deferred = [s for s in waiting if _defers(pipeline, s.asset)]
    if not waiting or len(deferred) != len(waiting):
        return RunView(run, run.status)
    coordinator = pipeline.scatter_coordinator
    scatters = tuple(
        (s.asset, s.partition, _counts(coordinator, pipeline, run.run_id, s.asset, s.partition))
        for s in deferred
        if pipeline.dag[s.asset].scatter is not None
    )
    return RunView(run, "running", scatters)


def list_run_views(pipeline: Pipeline, status: str | None, limit: int) -> list[RunView]:
    """The newest ``limit`` runs whose shown status is ``status`` (any when None)."""
    if status not in ("running", "waiting", "succeeded", "failed"):
        return [run_view(pipeline, r) for r in pipeline.runs(status=status, limit=limit)]
    # a shown `running` may be stored as waiting, and a stored `waiting` may show as
    # running; a stored `failed` may show as succeeded (tolerated failures)
    pair = ("running", "waiting") if status in ("running", "waiting") else ("succeeded", "failed")
    both = [r for stored in pair for r in pipeline.runs(status=stored, limit=limit)]
    both.sort(key=lambda r: r.created_at, reverse=True)
    views = (run_view(pipeline, r) for r in both)
    return [v for v in views if v.status == status][:limit]


def _has_scatters(pipeline: Pipeline) -> bool:
    return any(a.scatter is not None for a in pipeline.dag.assets.values())


def _defers(pipeline: Pipeline, asset: str) -> bool:
    """A scatter or parallel asset waits only on work the workers carry on with."""
    definition = pipeline.dag[asset]
    return definition.scatter is not None or definition.parallel is not None


def _counts(
    coordinator: object, pipeline: Pipeline, run_id: str, asset: str, partition: str
) -> ScatterCounts | None:
    if not isinstance(coordinator, ScatterProgress):
        return None
    return coordinator.progress(pipeline, run_id, asset, partition)
