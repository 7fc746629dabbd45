"""Building OpenLineage run events with the OpenLineage client's own event and facet classes.

* Jobs: the pipeline run is job ``<pipeline>``; each asset step is job
  ``<pipeline>.<asset>``, linked to the pipeline run by parent and root run facets.
* Run ids are UUIDs derived (uuid5) from (run, asset, partition, attempt): a redelivered
  step builds the same runId, so a receiver never sees a duplicate run.
* Datasets: an asset's value is the dataset ``<pipeline>.<asset>`` in the job namespace;
  a step's inputs are its upstream assets.
* A scatter is one job run; its item counts ride on the ``flowstone_scatter`` run facet.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import attr
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    RunFacet,
    error_message_run,
    job_type_job,
    parent_run,
    processing_engine_run,
)

from flowstone_observability._version import __version__

__all__ = ["PRODUCER", "LineageNames", "ScatterRunFacet", "run_uuid"]

PRODUCER: Final = f"urn:flowstone:flowstone-observability:{__version__}"
_NAMESPACE_UUID: Final = uuid.UUID("6f1c8d2e-5b0a-4e59-9a57-1d0f3c0b7e21")
_SCATTER_SCHEMA: Final = "urn:flowstone:facets:ScatterRunFacet:1"


def run_uuid(run_id: str, asset: str = "", partition: str = "", attempt: int | None = None) -> str:
    """The OpenLineage runId of a pipeline run (``asset`` empty) or of one step attempt."""
    name = run_id if not asset else f"{run_id}\x1f{asset}\x1f{partition}\x1f{attempt or 1}"
    return str(uuid.uuid5(_NAMESPACE_UUID, name))


@attr.define
class ScatterRunFacet(RunFacet):
    """Item counts of a scatter asset's run (all items roll up into this one run)."""

    total: int = attr.field(default=0)
    succeeded: int = attr.field(default=0)
    failed: int = attr.field(default=0)

    @staticmethod
    def _get_schema() -> str:
        return _SCATTER_SCHEMA


class LineageNames:
    """Builds the events for one job namespace."""

    __slots__ = ("_datasets", "_engine", "_jobs", "namespace")

    def __init__(self, namespace: str) -> None:
        if not namespace or len(namespace) > 200:
            raise ValueError("OpenLineage namespace must be 1-200 characters")
        self.namespace = namespace
        # the parts that never change for a name are built once (building the client's
        # attrs classes is most of an event's cost); names are bounded by the definitions
        self._jobs: dict[tuple[str, str], Job] = {}
        self._datasets: dict[tuple[bool, str, str], InputDataset | OutputDataset] = {}
        self._engine = _engine()

    def _job(self, pipeline: str, asset: str) -> Job:
        key = (pipeline, asset)
        job = self._jobs.get(key)
        if job is None:
            name = f"{pipeline}.{asset}" if asset else pipeline
            job = self._jobs[key] = Job(namespace=self.namespace, name=name,
                                        facets=_job_type("ASSET" if asset else "DAG"))
        return job

    def _input(self, pipeline: str, asset: str) -> InputDataset:
        key = (True, pipeline, asset)
        found = self._datasets.get(key)
        if found is None:
            found = self._datasets[key] = InputDataset(*self._dataset(pipeline, asset))
        assert isinstance(found, InputDataset)
        return found

    def _output(self, pipeline: str, asset: str) -> OutputDataset:
        key = (False, pipeline, asset)
        found = self._datasets.get(key)
        if found is None:
            found = self._datasets[key] = OutputDataset(*self._dataset(pipeline, asset))
        assert isinstance(found, OutputDataset)
        return found

    def _parent(self, pipeline: str, run_id: str) -> parent_run.ParentRunFacet:
        root_id = run_uuid(run_id)
        return parent_run.ParentRunFacet(
            run=parent_run.Run(runId=root_id),
            job=parent_run.Job(namespace=self.namespace, name=pipeline),
            root=parent_run.Root(
                run=parent_run.RootRun(runId=root_id),
                job=parent_run.RootJob(namespace=self.namespace, name=pipeline),
            ),
        )

    def _dataset(self, pipeline: str, asset: str) -> tuple[str, str]:
        return self.namespace, f"{pipeline}.{asset}"

    def pipeline_event(self, state: RunState, pipeline: str, run_id: str, at: datetime,
                       error: str | None = None) -> RunEvent:
        """START / COMPLETE / FAIL / ABORT of the pipeline run."""
        facets: dict[str, RunFacet] = {"processing_engine": self._engine}
        if error:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=error, programmingLanguage="python")
        return RunEvent(
            eventType=state, eventTime=at.isoformat(), producer=PRODUCER,
            run=Run(runId=run_uuid(run_id), facets=facets),
            job=self._job(pipeline, ""),
        )

    def step_event(
        self,
        state: RunState,
        pipeline: str,
        run_id: str,
        asset: str,
        partition: str,
        attempt: int | None,
        at: datetime,
        *,
        inputs: Sequence[str] = (),
        output: bool = False,
        error: str | None = None,
        scatter: ScatterRunFacet | None = None,
    ) -> RunEvent:
        """An asset step's event; ``inputs`` are upstream asset names."""
        facets: dict[str, RunFacet] = {"parent": self._parent(pipeline, run_id)}
        if error:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=error, programmingLanguage="python")
        if scatter is not None:
            facets["flowstone_scatter"] = scatter
        ins = [self._input(pipeline, name) for name in inputs]
        outs = [self._output(pipeline, asset)] if output else []
        return RunEvent(
            eventType=state, eventTime=at.isoformat(), producer=PRODUCER,
            run=Run(runId=run_uuid(run_id, asset, partition, attempt), facets=facets),
            job=self._job(pipeline, asset), inputs=ins, outputs=outs,
        )


def _engine() -> processing_engine_run.ProcessingEngineRunFacet:
    return processing_engine_run.ProcessingEngineRunFacet(
        version=__version__, name="flowstone", openlineageAdapterVersion=__version__)


def _job_type(kind: str) -> dict[str, Any]:
    return {"jobType": job_type_job.JobTypeJobFacet(
        processingType="BATCH", integration="FLOWSTONE", jobType=kind)}
