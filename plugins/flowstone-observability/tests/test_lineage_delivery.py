"""OpenLineage export without the client's serde on the hot path: the JSON we write is the
client's, character for character; batched file writes deliver each event once, in order."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import etl
from openlineage.client.event_v2 import RunState
from openlineage.client.serde import Serde
from openlineage.client.transport.file import FileConfig, FileTransport
from prometheus_client import CollectorRegistry

import flowstone_observability.lineage_file as lineage_file
from flowstone.events import Event
from flowstone_observability.lineage import OpenLineageObserver, file_transport
from flowstone_observability.lineage_file import JsonLinesFileTransport, LinesNotWritten


def scenario() -> list[Event]:
    """Every kind of event the observer turns into lineage: pipeline runs that succeed,
    fail, are cancelled or end oddly; steps that start (one redelivered, one retried),
    record lineage, succeed (one a scatter), fail (with and without a scatter, with an
    error text that needs escaping) and are skipped; partitions; no inputs; names that
    need escaping."""
    up = {"upstream_assets": ["a", "b"]}
    return [
        Event("run.started", "etl", "r1"),
        Event("asset.started", "etl", "r1", "a", "", {"attempt": 1}),
        Event("lineage.recorded", "etl", "r1", "a", "", {"upstream": []}),
        Event("asset.succeeded", "etl", "r1", "a"),
        Event("asset.started", "etl", "r1", "c", "2024-01-01", {"attempt": 1, **up}),
        Event("asset.started", "etl", "r1", "c", "2024-01-01", {"attempt": 1, **up}),
        Event("scatter.progress", "etl", "r1", "c", "2024-01-01", {"total": 4, "done": 4}),
        Event("lineage.recorded", "etl", "r1", "c", "2024-01-01", up),
        Event("asset.succeeded", "etl", "r1", "c", "2024-01-01", up),
        Event("asset.started", "etl", "r1", "d", "", {"attempt": 1, **up}),
        Event("asset.started", "etl", "r1", "d", "", {"attempt": 2, **up}),
        Event("scatter.progress", "etl", "r1", "d", "",
              {"total": 5, "succeeded": 3, "failed": 2}),
        Event("asset.failed", "etl", "r1", "d", "",
              {"error": 'ValueError: "bad" \u00e9\u4e2d\n\ttab', **up}),
        Event("asset.started", "etl", "r1", "e", "", {"attempt": 1, **up}),
        Event("asset.failed", "etl", "r1", "e", "", {"error": "boom", **up}),
        Event("asset.skipped", "etl", "r1", "f", "", up),
        Event("run.finished", "etl", "r1", data={"status": "failed"}),
        Event("run.started", "etl", "r2"),
        Event("run.finished", "etl", "r2", data={"status": "succeeded"}),
        Event("run.started", "other", "r3"),
        Event("run.finished", "other", "r3", data={"status": "cancelled"}),
        Event("run.finished", "other", "r4", data={"status": "odd"}),
        Event("run.started", 'caf\u00e9 "q"', "r5"),
        Event("asset.started", 'caf\u00e9 "q"', "r5", "\u00e0", "k\\1", {"attempt": 1}),
        Event("asset.succeeded", 'caf\u00e9 "q"', "r5", "\u00e0", "k\\1",
              {"upstream_assets": ["b\u00e9"]}),
    ]


def test_our_json_is_exactly_what_the_clients_serde_makes_of_its_run_event() -> None:
    observer = OpenLineageObserver(file_transport(os.devnull), delivery="sync",
                                   registry=CollectorRegistry())
    states, facets, compared = set(), set(), 0
    for event in scenario():
        step = observer.step(event)
        if step is None:
            continue
        ours = observer.names.to_json(step)
        theirs = Serde.to_json(observer.names.event(step))
        assert ours == theirs, (event, ours, theirs)
        assert json.loads(ours) == json.loads(theirs)
        compared += 1
        doc = json.loads(ours)
        states.add((bool(step.asset), doc["eventType"]))
        facets.update(doc["run"]["facets"])
    assert compared == 23
    assert states == {
        (False, "START"), (False, "COMPLETE"), (False, "FAIL"), (False, "ABORT"),
        (False, "OTHER"),
        (True, "START"), (True, "RUNNING"), (True, "COMPLETE"), (True, "FAIL"), (True, "ABORT"),
    }
    assert facets == {"parent", "processing_engine", "errorMessage", "flowstone_scatter"}


def test_batched_file_writes_deliver_every_event_once_in_order_as_the_client_would(
    tmp_path: Path,
) -> None:
    events = scenario() * 20
    # the client's own FileTransport, one emit (and one open) per event: the reference
    reference = tmp_path / "client.jsonl"
    client = OpenLineageObserver(FileTransport(FileConfig(str(reference), append=True)),
                                 delivery="sync", registry=CollectorRegistry())
    for event in events:
        client.on_event(event)
    client.close()

    gate, entered, batches = threading.Event(), threading.Event(), []

    class Held(JsonLinesFileTransport):
        """Holds the first batch until every event is enqueued, so the rest arrive as
        batches of many."""

        def write_lines(self, lines: Any) -> None:
            batches.append(len(lines))
            entered.set()
            gate.wait(10)
            super().write_lines(lines)

    batched = tmp_path / "batched.jsonl"
    registry = CollectorRegistry()
    observer = OpenLineageObserver(Held(batched), registry=registry)
    observer.on_event(events[0])
    assert entered.wait(10)
    for event in events[1:]:
        observer.on_event(event)
    gate.set()
    assert observer.flush(30)
    observer.close()

    # background delivery sends no RUNNING event (sync sends one per lineage.recorded)
    wanted = [line for line in reference.read_text().splitlines()
              if json.loads(line)["eventType"] != "RUNNING"]
    got = batched.read_text().splitlines()
    assert got == wanted
    assert max(batches) > 1 and sum(batches) == len(got)
    total = sum(registry.get_sample_value("flowstone_lineage_events_total",
                                          {"transport": "file", "type": t}) or 0
                for t in ("START", "COMPLETE", "FAIL", "ABORT", "OTHER"))
    assert total == len(got)


def test_a_redelivered_step_writes_no_second_run_id(tmp_path: Path) -> None:
    path = tmp_path / "lineage.jsonl"
    observer = OpenLineageObserver(file_transport(path), registry=CollectorRegistry())
    for event in scenario():
        observer.on_event(event)
    observer.close()
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    runs: dict[str, set[str]] = {}
    for doc in docs:
        runs.setdefault(doc["job"]["name"], set()).add(doc["run"]["runId"])
    assert len(runs["etl.c"]) == 1  # started twice (redelivered): the same run
    assert len(runs["etl.d"]) == 2  # attempt 2 is a new run
    starts = [d["run"]["runId"] for d in docs
              if d["job"]["name"] == "etl.c" and d["eventType"] == "START"]
    assert len(starts) == 2 and len(set(starts)) == 1


def test_a_failed_write_is_retried_without_writing_an_event_twice(tmp_path: Path) -> None:
    gate, entered, calls = threading.Event(), threading.Event(), []

    class Failing(JsonLinesFileTransport):
        """Holds the first batch until every event is enqueued; writes the first two lines
        of the second batch, then fails."""

        def write_lines(self, lines: Any) -> None:
            calls.append(len(lines))
            entered.set()
            gate.wait(10)
            if len(calls) == 2:
                super().write_lines(lines[:2])
                raise LinesNotWritten("disk full", 2)
            super().write_lines(lines)

    path = tmp_path / "lineage.jsonl"
    registry = CollectorRegistry()
    observer = OpenLineageObserver(Failing(path), retries=2, registry=registry)
    events = scenario()
    observer.on_event(events[0])
    assert entered.wait(10)  # the rest wait in the buffer: the next batch is all of them
    for event in events[1:]:
        observer.on_event(event)
    gate.set()
    assert observer.flush(30)
    observer.close()
    assert calls[1] > 2 and calls[2] == calls[1] - 2
    reference = OpenLineageObserver(file_transport(os.devnull), registry=CollectorRegistry())
    wanted = [reference.names.to_json(s) for s in map(reference.step, events)
              if s is not None and s.state is not RunState.RUNNING]
    assert path.read_text().splitlines() == wanted
    assert registry.get_sample_value("flowstone_lineage_errors_total",
                                     {"transport": "file"}) in (None, 0.0)


def test_a_torn_line_is_ended_before_the_next_write(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails part-way through a line: the lines before it count as written,
    the next write starts on a line of its own (the torn fragment stays alone)."""
    budget = [0]

    def write(fd: int, data: Any) -> int:
        if budget[0] <= 0:
            budget[0] = 10**9  # the next attempt succeeds
            raise OSError(28, "No space left on device")
        n = os.write(fd, bytes(data[: budget[0]]))
        budget[0] -= n
        return n

    fake_os = SimpleNamespace(**{name: getattr(os, name) for name in dir(os)
                                 if not name.startswith("__")})
    fake_os.write = write
    monkeypatch.setattr(lineage_file, "os", fake_os)
    path = tmp_path / "lineage.jsonl"
    transport = JsonLinesFileTransport(path)
    lines = ['{"n": 1}', '{"n": 2, "pad": "xxxxxxxxxx"}', '{"n": 3}']
    budget[0] = len(lines[0]) + 1 + 10
    with pytest.raises(LinesNotWritten) as failed:
        transport.write_lines(lines)
    assert failed.value.written == 1
    transport.write_lines(lines[1:])
    transport.close()
    assert path.read_text().splitlines() == [lines[0], lines[1][:10], lines[1], lines[2]]


def test_a_rotated_or_deleted_file_is_opened_again(tmp_path: Path) -> None:
    """The file is kept open between batches, yet what is written after log rotation
    moved it away (or after it was deleted) lands in a new file at the path."""
    path = tmp_path / "lineage.jsonl"
    transport = JsonLinesFileTransport(path)
    transport.write_lines(['{"n": 1}'])
    path.rename(tmp_path / "lineage.jsonl.1")
    transport.write_lines(['{"n": 2}', '{"n": 3}'])
    assert (tmp_path / "lineage.jsonl.1").read_text() == '{"n": 1}\n'
    assert path.read_text() == '{"n": 2}\n{"n": 3}\n'
    path.unlink()
    transport.write_lines(['{"n": 4}'])
    transport.write_lines(['{"n": 5}'])
    transport.close()
    assert path.read_text() == '{"n": 4}\n{"n": 5}\n'


def test_a_file_that_cannot_be_written_is_counted_or_fails_the_asset(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-directory" / "lineage.jsonl"
    registry = CollectorRegistry()
    observer = OpenLineageObserver(file_transport(missing), retries=2, registry=registry)
    events = scenario()
    for event in events:
        observer.on_event(event)
    assert observer.flush(30)
    observer.close()
    sent = [s for s in map(observer.step, events)
            if s is not None and s.state is not RunState.RUNNING]
    assert registry.get_sample_value("flowstone_lineage_errors_total",
                                     {"transport": "file"}) == len(sent)

    strict = etl([OpenLineageObserver(file_transport(missing), delivery="sync", retries=1,
                                      registry=CollectorRegistry())],
                 on_lineage_error="fail")
    result = strict.run("source")
    assert result.status == "failed"
    failed = [m for m in result.materializations if m.asset == "source"]
    assert failed and "lineage" in (failed[0].error or "")


def test_a_child_forked_while_a_write_holds_the_lock_can_still_write(tmp_path: Path) -> None:
    """A prefork pool forks from a process whose sender thread may be mid-write: the child
    must not inherit a lock nobody will release."""
    transport = JsonLinesFileTransport(tmp_path / "lineage.jsonl")
    transport.write_lines(['{"from": "parent"}'])
    with transport._lock:  # as if another thread were writing at the moment of the fork
        pid = os.fork()
        if pid == 0:
            try:
                transport.write_lines(['{"from": "child"}'])
            finally:
                os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lines = (tmp_path / "lineage.jsonl").read_text().splitlines()
    assert [json.loads(line)["from"] for line in lines] == ["parent", "child"]
    transport.close()
