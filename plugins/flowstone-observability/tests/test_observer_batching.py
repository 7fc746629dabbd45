"""The observer records events in batches: emitting threads only append, and every scrape
(any collect of the registry) first records what is buffered, so a scrape never misses an
event emitted before it began."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import etl, value
from prometheus_client import CollectorRegistry, generate_latest

from flowstone.errors import UsageError
from flowstone.events import Event
from flowstone_observability import PrometheusObserver
from flowstone_observability.observer import FLUSH_SECONDS


def started(n: int) -> list[Event]:
    return [Event("run.started", "p", f"r{i}") for i in range(n)]


def test_a_scrape_records_what_is_buffered_first() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, batch=10_000)
    pipeline = etl([observer])
    assert pipeline.run("total").status == "succeeded"
    assert observer.buffered > 0  # nothing recorded yet: the run only appended
    text = generate_latest(registry).decode()
    assert observer.buffered == 0
    assert 'flowstone_materializations_total{asset="total",pipeline="etl",status="succeeded"} ' \
           '1.0' in text
    assert value(registry, "flowstone_runs_finished_total", pipeline="etl",
                 status="succeeded") == 1


def test_a_full_buffer_is_recorded_by_the_emitting_thread() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, batch=3)
    for event in started(2):
        observer.on_event(event)
    assert observer.buffered == 2
    observer.on_event(started(1)[0])
    assert observer.buffered == 0
    assert observer.flush() == 0


def test_batch_one_records_each_event_at_once() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, batch=1)
    observer.on_event(started(1)[0])
    assert observer.buffered == 0


@pytest.mark.parametrize("batch", [0, -1, 2.5, True, "8"])
def test_batch_must_be_a_positive_integer(batch: object) -> None:
    with pytest.raises(UsageError, match="batch must be a positive integer"):
        PrometheusObserver(CollectorRegistry(), batch=batch)  # type: ignore[arg-type]


def test_a_failing_update_is_counted_and_the_rest_are_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, batch=100)

    def broken(event: Event) -> None:
        raise RuntimeError("label exploded")

    observer._handlers["run.finished"] = broken
    observer.on_event(Event("run.finished", "p", "r", data={"status": "succeeded"}))
    for event in started(2):
        observer.on_event(event)
    assert value(registry, "flowstone_runs_started_total", pipeline="p") == 2
    assert value(registry, "flowstone_observer_errors_total", pipeline="p",
                 observer="PrometheusObserver", kind="run.finished") == 1
    assert "label exploded" in caplog.text


def test_a_forked_child_drops_the_parents_buffer() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, batch=100)
    for event in started(5):
        observer.on_event(event)
    pid = os.fork()
    if pid == 0:  # the child: the parent records these five, the child must not
        os._exit(0 if observer.buffered == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert observer.buffered == 5
    assert value(registry, "flowstone_runs_started_total", pipeline="p") == 5


def test_multiprocess_mode_records_within_a_second_without_a_scrape(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """In multiprocess mode the scrape reads files in another process, which cannot flush
    this one: a background thread does, every ``FLUSH_SECONDS``."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    observer = PrometheusObserver(CollectorRegistry(), batch=10_000)
    observer.on_event(started(1)[0])
    deadline = time.monotonic() + 30 * FLUSH_SECONDS
    while observer.buffered and time.monotonic() < deadline:
        time.sleep(FLUSH_SECONDS / 10)
    assert observer.buffered == 0


def test_a_celery_task_end_and_a_pool_process_exit_record_the_buffer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """In a worker, the scrape reads files: a pool process records what it buffered when
    each task ends and before it exits (``flowstone worker --metrics-port``'s hooks)."""
    from celery.signals import task_postrun, worker_process_shutdown

    from flowstone_observability import worker

    monkeypatch.setattr("prometheus_client.multiprocess.mark_process_dead",
                        lambda pid, path=None: None)
    worker._connect_process_cleanup()
    observer = PrometheusObserver(CollectorRegistry(), batch=10_000)
    observer.on_event(started(1)[0])
    task_postrun.send(sender=None)
    assert observer.buffered == 0
    observer.on_event(started(1)[0])
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    assert observer.buffered == 0
