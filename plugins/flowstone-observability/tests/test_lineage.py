"""OpenLineage export: events built with the client's classes, its serde, its transports."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import etl, value
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.serde import Serde
from prometheus_client import CollectorRegistry

import flowstone as fs
from flowstone.events import Event
from flowstone_observability.lineage import OpenLineageObserver, file_transport, http_transport

REQUIRED = ("eventTime", "producer", "schemaURL", "eventType", "run", "job")


class Receiver:
    """A local OpenLineage endpoint (127.0.0.1, stopped by the test)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if owner.status == 200:
                    owner.bodies.append(json.loads(body))
                self.send_response(owner.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _rebuild(doc: dict[str, Any]) -> RunEvent:
    """The event again from its JSON, with the client's classes (their validators check
    the runId is a UUID)."""
    return RunEvent(
        eventType=RunState(doc["eventType"]), eventTime=doc["eventTime"],
        producer=doc["producer"],
        run=Run(runId=doc["run"]["runId"]),
        job=Job(namespace=doc["job"]["namespace"], name=doc["job"]["name"]),
        inputs=[InputDataset(d["namespace"], d["name"]) for d in doc.get("inputs", [])],
        outputs=[OutputDataset(d["namespace"], d["name"]) for d in doc.get("outputs", [])],
    )


def _skeleton(doc: dict[str, Any]) -> dict[str, Any]:
    keep = {k: doc[k] for k in ("eventType", "eventTime", "producer", "schemaURL")}
    keep["run"] = doc["run"]["runId"]
    keep["job"] = (doc["job"]["namespace"], doc["job"]["name"])
    keep["inputs"] = [(d["namespace"], d["name"]) for d in doc.get("inputs", [])]
    keep["outputs"] = [(d["namespace"], d["name"]) for d in doc.get("outputs", [])]
    return keep


def test_file_transport_events_follow_the_spec_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "lineage.jsonl"
    observer = OpenLineageObserver(file_transport(path), delivery="sync")
    pipeline = etl([observer])
    observer.bind(pipeline)
    pipeline.run("total")
    pipeline.run("broken")
    pipeline.run("squares")
    observer.close()
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert docs
    for doc in docs:
        for key in REQUIRED:
            assert key in doc, (key, doc)
        uuid.UUID(doc["run"]["runId"])
        rebuilt = _rebuild(doc)
        assert _skeleton(json.loads(Serde.to_json(rebuilt))) == _skeleton(doc)
    by_job = {}
    for doc in docs:
        by_job.setdefault(doc["job"]["name"], []).append(doc)
    total = [d["eventType"] for d in by_job["etl.total"]]
    assert total == ["START", "RUNNING", "COMPLETE"]
    complete = by_job["etl.total"][-1]
    assert [i["name"] for i in complete["inputs"]] == ["etl.doubled"]
    assert [o["name"] for o in complete["outputs"]] == ["etl.total"]
    parent = complete["run"]["facets"]["parent"]
    pipeline_runs = {d["run"]["runId"] for d in by_job["etl"]}
    assert parent["run"]["runId"] in pipeline_runs
    assert parent["root"]["run"]["runId"] == parent["run"]["runId"]
    assert (parent["job"]["namespace"], parent["job"]["name"]) == ("flowstone", "etl")
    broken = by_job["etl.broken"][-1]
    assert broken["eventType"] == "FAIL"
    assert "broken on purpose" in broken["run"]["facets"]["errorMessage"]["message"]
    assert {d["eventType"] for d in by_job["etl"]} == {"START", "COMPLETE", "FAIL"}
    # scatter: one job run for the asset, the items rolled up as counts
    squares = by_job["etl.squares"]
    assert len({d["run"]["runId"] for d in squares}) == 1
    facet = squares[-1]["run"]["facets"]["flowstone_scatter"]
    assert (facet["total"], facet["succeeded"], facet["failed"]) == (4, 4, 0)


def test_a_redelivered_step_builds_the_same_run_id() -> None:
    observer = OpenLineageObserver(file_transport("/dev/null"), delivery="sync")
    start = Event("asset.started", "p", "run-1", "a", "k", {"attempt": 1})
    first, again = observer.build(start), observer.build(start)
    assert first is not None and again is not None
    assert first.run.runId == again.run.runId
    retry = observer.build(Event("asset.started", "p", "run-1", "a", "k", {"attempt": 2}))
    other = observer.build(Event("asset.started", "p", "run-1", "a", "k2", {"attempt": 1}))
    assert retry is not None and other is not None
    assert len({first.run.runId, retry.run.runId, other.run.runId}) == 3
    done = observer.build(Event("asset.succeeded", "p", "run-1", "a", "k2"))
    assert done is not None and done.run.runId == other.run.runId
    cancelled = observer.build(Event("run.finished", "p", "run-1", data={"status": "cancelled"}))
    assert cancelled is not None and cancelled.eventType is RunState.ABORT


def test_http_transport_delivers_to_a_local_receiver(receiver: Receiver) -> None:
    registry = CollectorRegistry()
    observer = OpenLineageObserver(http_transport(receiver.url), registry=registry)
    pipeline = etl([observer])
    pipeline.run("total")
    assert observer.flush(30)
    observer.close()
    jobs = [(b["job"]["name"], b["eventType"]) for b in receiver.bodies]
    assert ("etl.total", "COMPLETE") in jobs and ("etl", "START") in jobs
    sent = sum(value(registry, "flowstone_lineage_events_total", transport="http", type=t)
               for t in ("START", "RUNNING", "COMPLETE"))
    assert sent == len(receiver.bodies)


def test_delivery_failures_are_logged_and_counted_or_fail_the_asset() -> None:
    failing = Receiver(status=500)
    try:
        registry = CollectorRegistry()
        logged = OpenLineageObserver(http_transport(failing.url), delivery="sync", retries=1,
                                     registry=registry)
        ok = etl([logged])
        assert ok.run("total").status == "succeeded"  # on_lineage_error="log"
        assert value(registry, "flowstone_lineage_errors_total", transport="http") > 0

        strict = etl([OpenLineageObserver(http_transport(failing.url), delivery="sync",
                                          retries=1, registry=CollectorRegistry())],
                     on_lineage_error="fail")
        result = strict.run("source")
        assert result.status == "failed"
        failed = [m for m in result.materializations if m.asset == "source"]
        assert failed and "lineage" in (failed[0].error or "")
    finally:
        failing.close()


def test_a_full_buffer_drops_and_counts_instead_of_blocking() -> None:
    gate = threading.Event()

    class Slow:
        kind = "slow"

        def emit(self, event: Any) -> None:
            gate.wait(10)

        def close(self, timeout: float = -1) -> bool:
            return True

    registry = CollectorRegistry()
    observer = OpenLineageObserver(Slow(), buffer_size=2, registry=registry)  # type: ignore[arg-type]
    for n in range(10):
        observer.on_event(Event("run.started", "p", f"r{n}"))
    assert value(registry, "flowstone_lineage_dropped_total", transport="slow") >= 7
    gate.set()
    observer.close()


def test_a_transport_is_required(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(fs.errors.UsageError, match="FLOWSTONE_OPENLINEAGE_URL"):
        OpenLineageObserver()
    monkeypatch.setenv("FLOWSTONE_OPENLINEAGE_FILE", str(tmp_path / "l.jsonl"))
    assert OpenLineageObserver().kind == "file"
