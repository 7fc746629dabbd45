"""Building OpenLineage run events with the OpenLineage client's own event and facet classes.

* Jobs: the pipeline run is job ``<pipeline>``; each asset step is job
  ``<pipeline>.<asset>``, linked to the pipeline run by parent and root run facets.
* Run ids are UUIDs derived (uuid5) from (run, asset, partition, attempt): a redelivered
  step builds the same runId, so a receiver never sees a duplicate run.
* Datasets: an asset's value is the dataset ``<pipeline>.<asset>`` in the job namespace;
  a step's inputs are its upstream assets.
* A scatter is one job run; its item counts ride on the ``flowstone_scatter`` run facet.

One :class:`LineageStep` says what an event is; :meth:`LineageNames.event` builds it as the
client's ``RunEvent`` (what a client transport such as ``HttpTransport`` is given) and
:meth:`LineageNames.to_json` as the JSON text ``Serde.to_json`` makes of that ``RunEvent``,
character for character (a test compares them for every kind of event). The JSON text is
put together from pieces the client's classes and serde produced once per job, dataset and
pipeline run: measured on a step's COMPLETE event with two inputs and a scatter facet,
building the ``RunEvent`` and ``Serde.to_json`` of it take about 160 µs of CPU (60 µs the
constructors and their validators, which parse back the timestamp, URLs and UUIDs we made;
the rest ``attr.asdict`` and ``Serde.remove_nulls_and_enums`` walking every facet and
``json.dumps`` sorting them), ``to_json`` about 10 µs.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
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
from openlineage.client.serde import Serde

from flowstone_observability._version import __version__

__all__ = ["PRODUCER", "LineageNames", "LineageStep", "ScatterRunFacet", "run_uuid"]

PRODUCER: Final = f"urn:flowstone:flowstone-observability:{__version__}"
_NAMESPACE_UUID: Final = uuid.UUID("6f1c8d2e-5b0a-4e59-9a57-1d0f3c0b7e21")
_SCATTER_SCHEMA: Final = "urn:flowstone:facets:ScatterRunFacet:1"
_RUNS: Final = 256  # pipeline runs whose parent facet is kept serialized
_STEPS: Final = 4096  # step attempts whose runId is remembered


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


@dataclass(frozen=True, slots=True)
class LineageStep:
    """One OpenLineage event to send: of the pipeline run when ``asset`` is empty, else of
    one attempt of an asset step (``inputs`` are upstream asset names; ``output``: the
    asset's own dataset is its output; ``scatter``: total, succeeded, failed items)."""

    state: RunState
    pipeline: str
    run_id: str
    at: datetime
    asset: str = ""
    partition: str = ""
    attempt: int | None = None
    inputs: Sequence[str] = ()
    output: bool = False
    error: str | None = None
    scatter: tuple[int, int, int] | None = None


class LineageNames:
    """Builds the events for one job namespace."""

    __slots__ = ("_engine", "_inputs", "_jobs", "_lock", "_outputs", "_parents", "_run_ids",
                 "_templates", "_texts", "namespace")

    def __init__(self, namespace: str) -> None:
        if not namespace or len(namespace) > 200:
            raise ValueError("OpenLineage namespace must be 1-200 characters")
        self.namespace = namespace
        # the parts that never change for a name are built once (building the client's
        # attrs classes is most of an event's cost); names are bounded by the definitions
        self._jobs: dict[tuple[str, str], Job] = {}
        self._inputs: dict[tuple[str, str], InputDataset] = {}
        self._outputs: dict[tuple[str, str], OutputDataset] = {}
        self._engine = _engine()
        # the same parts as the client's serde writes them, for to_json
        self._texts: dict[Any, str] = {"engine": Serde.to_json(self._engine)}
        self._parents: dict[tuple[str, str], str] = {}
        self._run_ids: dict[tuple[str, str, str, int | None], str] = {}
        self._lock = threading.Lock()
        self._templates = {"error": Serde.to_dict(_error("")),
                           "scatter": Serde.to_dict(ScatterRunFacet())}

    # --- the client's RunEvent -----------------------------------------------------
    def event(self, step: LineageStep) -> RunEvent:
        """``step`` as the client's ``RunEvent``."""
        facets: dict[str, RunFacet] = {}
        if step.asset:
            facets["parent"] = self._parent(step.pipeline, step.run_id)
        else:
            facets["processing_engine"] = self._engine
        if step.error:
            facets["errorMessage"] = _error(step.error)
        if step.scatter is not None:
            total, succeeded, failed = step.scatter
            facets["flowstone_scatter"] = ScatterRunFacet(total=total, succeeded=succeeded,
                                                          failed=failed)
        inputs: list[InputDataset] = []
        outputs: list[OutputDataset] = []
        if step.asset:
            inputs = [self._input(step.pipeline, name) for name in step.inputs]
            if step.output:
                outputs.append(self._output(step.pipeline, step.asset))
        return RunEvent(
            eventType=step.state, eventTime=step.at.isoformat(), producer=PRODUCER,
            run=Run(runId=self._run_id(step), facets=facets),
            job=self._job(step.pipeline, step.asset), inputs=inputs, outputs=outputs,
        )

    def _job(self, pipeline: str, asset: str) -> Job:
        key = (pipeline, asset)
        job = self._jobs.get(key)
        if job is None:
            name = self._dataset(pipeline, asset) if asset else pipeline
            job = self._jobs[key] = Job(namespace=self.namespace, name=name,
                                        facets=_job_type("ASSET" if asset else "DAG"))
        return job

    def _input(self, pipeline: str, asset: str) -> InputDataset:
        key = (pipeline, asset)
        found = self._inputs.get(key)
        if found is None:
            found = self._inputs[key] = InputDataset(self.namespace,
                                                     self._dataset(pipeline, asset))
        return found

    def _output(self, pipeline: str, asset: str) -> OutputDataset:
        key = (pipeline, asset)
        found = self._outputs.get(key)
        if found is None:
            found = self._outputs[key] = OutputDataset(self.namespace,
                                                       self._dataset(pipeline, asset))
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

    @staticmethod
    def _dataset(pipeline: str, asset: str) -> str:
        return f"{pipeline}.{asset}"

    def _run_id(self, step: LineageStep) -> str:
        # remembered: a step's START and final event compute one uuid5
        key = (step.run_id, step.asset, step.partition, step.attempt)
        found = self._run_ids.get(key)
        if found is None:
            found = run_uuid(*key)
            with self._lock:
                self._run_ids[key] = found
                while len(self._run_ids) > _STEPS:
                    del self._run_ids[next(iter(self._run_ids))]
        return found

    # --- the same event as JSON ----------------------------------------------------
    def to_json(self, step: LineageStep) -> str:
        """``Serde.to_json(self.event(step))``, without building the event: the text of
        every piece that does not change (a job, a dataset, a pipeline run's parent facet)
        is what the client's serde made of it once, keys sorted as ``Serde.to_json`` sorts
        them; only the time, state, runId, error and counts are written per event."""
        # (facet name, JSON text); the names, the time, state and runId need no escaping
        facets: list[tuple[str, str]] = []
        inputs = outputs = ""
        if step.asset:
            facets.append(("parent", self._parent_json(step.pipeline, step.run_id)))
            inputs = ", ".join([self._json("i", step.pipeline, name) for name in step.inputs])
            if step.output:
                outputs = self._json("o", step.pipeline, step.asset)
        else:
            facets.append(("processing_engine", self._texts["engine"]))
        if step.error:
            facets.append(("errorMessage", _dumps({**self._templates["error"],
                                                   "message": step.error})))
        if step.scatter is not None:
            total, succeeded, failed = step.scatter
            facets.append(("flowstone_scatter", _dumps({
                **self._templates["scatter"], "total": total, "succeeded": succeeded,
                "failed": failed})))
        facets.sort()
        run_facets = ", ".join([f'"{name}": {text}' for name, text in facets])
        return (
            f'{{"eventTime": "{step.at.isoformat()}", "eventType": "{step.state.value}", '
            f'"inputs": [{inputs}], "job": {self._json("j", step.pipeline, step.asset)}, '
            f'"outputs": [{outputs}], "producer": {_PRODUCER_JSON}, '
            f'"run": {{"facets": {{{run_facets}}}, "runId": "{self._run_id(step)}"}}, '
            f'"schemaURL": {_EVENT_SCHEMA_JSON}}}'
        )

    def _json(self, what: str, pipeline: str, asset: str) -> str:
        """The serialized job ("j"), input ("i") or output ("o") dataset of an asset."""
        key = (what, pipeline, asset)
        text = self._texts.get(key)
        if text is None:
            built = {"j": self._job, "i": self._input, "o": self._output}[what](pipeline, asset)
            text = self._texts[key] = Serde.to_json(built)
        return text

    def _parent_json(self, pipeline: str, run_id: str) -> str:
        key = (pipeline, run_id)
        text = self._parents.get(key)
        if text is None:
            text = Serde.to_json(self._parent(pipeline, run_id))
            with self._lock:
                self._parents[key] = text
                while len(self._parents) > _RUNS:
                    del self._parents[next(iter(self._parents))]
        return text


def _dumps(value: Any) -> str:
    """``value`` as ``Serde.to_json`` writes it (``json.dumps`` defaults, keys sorted)."""
    return json.dumps(value, sort_keys=True)


_PRODUCER_JSON: Final = _dumps(PRODUCER)
_EVENT_SCHEMA_JSON: Final = _dumps(RunEvent._get_schema())


def _error(message: str) -> error_message_run.ErrorMessageRunFacet:
    return error_message_run.ErrorMessageRunFacet(message=message, programmingLanguage="python")


def _engine() -> processing_engine_run.ProcessingEngineRunFacet:
    return processing_engine_run.ProcessingEngineRunFacet(
        version=__version__, name="flowstone", openlineageAdapterVersion=__version__)


def _job_type(kind: str) -> dict[str, Any]:
    return {"jobType": job_type_job.JobTypeJobFacet(
        processingType="BATCH", integration="FLOWSTONE", jobType=kind)}
