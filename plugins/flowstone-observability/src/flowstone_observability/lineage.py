"""``OpenLineageObserver``: FlowStone runs and materializations as OpenLineage run events.

Events go through the OpenLineage client's own transports: ``FileTransport`` (one JSON
document per line; :func:`file_transport` gives its subclass that takes a batch of events
serialized by :meth:`LineageNames.to_json`, the text ``Serde.to_json`` makes of them) or
``HttpTransport`` (POST of the client's ``RunEvent``, with the client's retry of 5xx
answers). By default they are handed to a background thread through a bounded buffer;
once woken it waits 20 ms for more (not while ``flush`` waits), then builds and sends
everything that is waiting, so a slow or unreachable receiver never slows a run: when the
buffer is full the event is dropped and counted (``flowstone_lineage_dropped_total``); a
delivery that still fails after ``retries`` attempts is logged and counted
(``flowstone_lineage_errors_total``). With ``delivery="sync"`` every event is sent in the
engine's thread and a failure raises, which the engine counts, and which fails the asset
when the pipeline has ``on_lineage_error="fail"`` (the ``lineage.recorded`` event is sent
as a RUNNING event with the step's datasets before its materialization is recorded).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal

from openlineage.client.event_v2 import RunEvent, RunState
from openlineage.client.transport.transport import Transport
from prometheus_client import CollectorRegistry

from flowstone.errors import UsageError
from flowstone.events import Event
from flowstone_observability.lineage_events import LineageNames, LineageStep
from flowstone_observability.lineage_file import JsonLinesFileTransport, LinesNotWritten, LineWriter
from flowstone_observability.metrics import Metrics

__all__ = ["FILE_ENV", "URL_ENV", "OpenLineageObserver", "file_transport", "http_transport"]

log = logging.getLogger("flowstone.observability")

URL_ENV: Final = "FLOWSTONE_OPENLINEAGE_URL"
FILE_ENV: Final = "FLOWSTONE_OPENLINEAGE_FILE"
_MEMORY: Final = 4096  # open steps whose attempt / scatter counts are remembered
_BATCH: Final = 1000  # events the sender thread takes per wake-up, at most
# after waking, the sender waits this long (unless someone flushes) for more events: waking
# a thread and writing costs more than building an event (bench/lineage.py, events 0.5 ms
# apart: ~290 µs of CPU per step when the sender wakes for each, ~80 with this wait)
_LINGER: Final = 0.02
_FINAL = {"asset.succeeded": RunState.COMPLETE, "asset.failed": RunState.FAIL,
          "asset.skipped": RunState.ABORT}
# background delivery sends no RUNNING event (it exists so that delivery="sync" can fail
# the asset before its materialization is recorded); COMPLETE carries the same datasets
_BACKGROUND_KINDS = frozenset({"run.started", "run.finished", "asset.started", "asset.succeeded",
                               "asset.failed", "asset.skipped", "scatter.progress"})
_RUN_FINAL = {"succeeded": RunState.COMPLETE, "failed": RunState.FAIL,
              "cancelled": RunState.ABORT}


def file_transport(path: str | os.PathLike[str]) -> Transport:
    """The client's ``FileTransport`` appending JSON lines to ``path``: for a local path its
    subclass :class:`~flowstone_observability.lineage_file.JsonLinesFileTransport`, which
    keeps the file open and writes a batch of lines at once."""
    from openlineage.client.transport.file import FileConfig, FileTransport

    if "://" in os.fspath(path):  # file://, or a remote file system through fsspec
        return FileTransport(FileConfig(log_file_path=os.fspath(path), append=True))
    return JsonLinesFileTransport(path)


def http_transport(url: str, *, endpoint: str = "api/v1/lineage", timeout: float = 5.0,
                   ) -> Transport:
    """The client's ``HttpTransport`` POSTing to ``url`` + ``endpoint``."""
    from openlineage.client.transport.http import HttpConfig, HttpTransport

    if not url.startswith(("http://", "https://")):
        raise UsageError(f"OpenLineage URL must start with http:// or https://, got {url[:40]!r}")
    retry = {"total": 2, "connect": 2, "read": 2, "backoff_factor": 0.1,
             "status_forcelist": [500, 502, 503, 504], "allowed_methods": ["POST"]}
    return HttpTransport(HttpConfig(url=url, endpoint=endpoint, timeout=timeout, retry=retry))


class OpenLineageObserver:
    """Sends OpenLineage events for pipeline runs and asset steps.

    Args:
        transport: an OpenLineage client ``Transport``; default: :func:`http_transport` of
            ``FLOWSTONE_OPENLINEAGE_URL`` or :func:`file_transport` of
            ``FLOWSTONE_OPENLINEAGE_FILE`` (one must be set). A transport that also has
            ``write_lines`` (:class:`~flowstone_observability.lineage_file.LineWriter`) is
            given the events serialized, a batch at a time; any other the client's
            ``RunEvent``, one ``emit`` each.
        namespace: the OpenLineage job and dataset namespace.
        delivery: ``"background"`` (bounded buffer, sender thread) or ``"sync"``.
        buffer_size: events the background buffer holds before dropping.
        retries: delivery attempts per event (with exponential backoff from 0.1 s).
        pipelines: pipelines whose dependency graphs name a step's input datasets.
        registry: where the lineage metrics live (default: process-wide).

    Raises:
        UsageError: no transport and neither variable set; bad arguments.
    """

    def __init__(
        self,
        transport: Transport | None = None,
        *,
        namespace: str = "flowstone",
        delivery: Literal["background", "sync"] = "background",
        buffer_size: int = 10_000,
        retries: int = 3,
        pipelines: Iterable[Any] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        if delivery not in ("background", "sync"):
            raise UsageError(f"delivery must be 'background' or 'sync', got {delivery!r}")
        if not isinstance(buffer_size, int) or buffer_size < 1:
            raise UsageError(f"buffer_size must be a positive int, got {buffer_size!r}")
        if not isinstance(retries, int) or retries < 1:
            raise UsageError(f"retries must be an int >= 1, got {retries!r}")
        self.transport = transport if transport is not None else _from_env()
        self._lines = self.transport if isinstance(self.transport, LineWriter) else None
        self.names = LineageNames(namespace)
        self.delivery = delivery
        # background delivery needs only these; sync also turns lineage.recorded into RUNNING
        self.event_kinds = _BACKGROUND_KINDS if delivery == "background" else None
        self.retries = retries
        self.kind = str(getattr(self.transport, "kind", None) or type(self.transport).__name__)
        metrics = Metrics(registry) if registry is not None else Metrics.shared()
        self._sent = metrics.counter("flowstone_lineage_events")
        self._errors = metrics.counter("flowstone_lineage_errors").labels(self.kind)
        self._dropped = metrics.counter("flowstone_lineage_dropped").labels(self.kind)
        self._buffered = metrics.gauge("flowstone_lineage_buffer").labels(self.kind)
        self._deps: dict[tuple[str, str], tuple[str, ...]] = {}
        self._open: OrderedDict[tuple[str, str, str, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=buffer_size)
        self._thread: threading.Thread | None = None
        self._hurry = threading.Event()  # set while flush() waits: the sender does not linger
        self._closed = False
        for p in pipelines:
            self.bind(p)

    def bind(self, pipeline: Any) -> None:
        """Learn ``pipeline``'s dependencies (a step's input datasets)."""
        for a in pipeline.dag.assets.values():
            self._deps[(pipeline.name, a.name)] = tuple(a.deps)

    # --- events -> lineage ---------------------------------------------------------
    def on_event(self, event: Event) -> None:
        if self.delivery == "sync":
            step = self.step(event)
            if step is not None:
                self._deliver([step], raise_errors=True)
        elif event.kind in _BACKGROUND_KINDS:
            # built in the sender thread: the engine's thread only enqueues
            self._enqueue(event)

    def build(self, e: Event) -> RunEvent | None:
        """The OpenLineage event for ``e`` (the client's ``RunEvent``), or None when ``e``
        has none."""
        step = self.step(e)
        return None if step is None else self.names.event(step)

    def step(self, e: Event) -> LineageStep | None:
        """What OpenLineage event ``e`` is, or None when it is none (``scatter.progress``
        is remembered for the step's final event)."""
        if e.kind == "run.started":
            return LineageStep(RunState.START, e.pipeline, e.run_id, e.at)
        if e.kind == "run.finished":
            state = _RUN_FINAL.get(str(e.data.get("status")), RunState.OTHER)
            return LineageStep(state, e.pipeline, e.run_id, e.at)
        key = (e.pipeline, e.run_id, e.asset, e.partition)
        if e.kind == "asset.started":
            attempt = e.data.get("attempt")
            with self._lock:
                self._open.pop(key, None)
                self._open[key] = {"attempt": attempt if isinstance(attempt, int) else 1}
                while len(self._open) > _MEMORY:
                    self._open.popitem(last=False)
            return LineageStep(RunState.START, e.pipeline, e.run_id, e.at, e.asset,
                               e.partition, self._attempt(key), self._inputs(e))
        if e.kind == "scatter.progress":
            with self._lock:
                self._open.setdefault(key, {"attempt": 1})["scatter"] = dict(e.data)
            return None
        if e.kind == "lineage.recorded":
            return LineageStep(RunState.RUNNING, e.pipeline, e.run_id, e.at, e.asset,
                               e.partition, self._attempt(key), self._inputs(e), output=True)
        final = _FINAL.get(e.kind)
        if final is None:
            return None
        with self._lock:
            step = self._open.pop(key, {})
        error = e.data.get("error") if final is not RunState.COMPLETE else None
        return LineageStep(
            final, e.pipeline, e.run_id, e.at, e.asset, e.partition, step.get("attempt"),
            self._inputs(e), output=final is RunState.COMPLETE,
            error=str(error) if error else None, scatter=_scatter(step.get("scatter")),
        )

    def _attempt(self, key: tuple[str, str, str, str]) -> int:
        with self._lock:
            step = self._open.get(key)
        return int(step["attempt"]) if step else 1

    def _inputs(self, e: Event) -> tuple[str, ...]:
        named = e.data.get("upstream_assets")
        if isinstance(named, list | tuple):
            return tuple(str(n) for n in named)
        return self._deps.get((e.pipeline, e.asset), ())

    # --- delivery ------------------------------------------------------------------
    def _enqueue(self, event: Event) -> None:
        self._start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._dropped.inc()
            log.warning("OpenLineage buffer full (%d events): dropped %s of %s %s",
                        self._queue.maxsize, event.kind, event.pipeline, event.asset)

    def _deliver(self, steps: Sequence[LineageStep], *, raise_errors: bool) -> None:
        if self._lines is None:
            for step in steps:
                self._send(self.names.event(step), raise_errors=raise_errors)
        elif steps:
            self._write(self._lines, [self.names.to_json(step) for step in steps], steps,
                        raise_errors=raise_errors)

    def _send(self, event: RunEvent, *, raise_errors: bool) -> bool:
        delay = 0.1
        for attempt in range(1, self.retries + 1):
            try:
                self.transport.emit(event)
            except Exception as exc:
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                self._errors.inc()
                log.error("OpenLineage %s of job %s not delivered after %d attempts: %s: %s",
                          _state(event.eventType), event.job.name, self.retries,
                          type(exc).__name__, exc)
                if raise_errors:
                    raise
                return False
            self._sent.labels(self.kind, _state(event.eventType)).inc()
            return True
        return False

    def _write(self, writer: LineWriter, lines: list[str], steps: Sequence[LineageStep], *,
               raise_errors: bool) -> None:
        """Write ``lines`` (of ``steps``) with retries; a retry writes only what the failed
        attempt did not (no event is written twice)."""
        delay, done = 0.1, 0
        for attempt in range(1, self.retries + 1):
            try:
                writer.write_lines(lines[done:])
                done = len(lines)
                break
            except Exception as exc:
                if isinstance(exc, LinesNotWritten):
                    done = min(len(lines), done + exc.written)
                if done == len(lines):
                    break
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                failed, first = len(lines) - done, steps[done]
                self._errors.inc(failed)
                log.error("%d OpenLineage events (the first: %s of job %s) not delivered "
                          "after %d attempts: %s: %s", failed, _state(first.state),
                          f"{first.pipeline}.{first.asset}" if first.asset else first.pipeline,
                          self.retries, type(exc).__name__, exc)
                if raise_errors:
                    raise
                break
        for state, count in Counter(_state(s.state) for s in steps[:done]).items():
            self._sent.labels(self.kind, state).inc(count)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._closed:
                    raise UsageError("this OpenLineageObserver was closed")
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name="flowstone-openlineage")
                    self._thread.start()

    def _run(self) -> None:
        while True:
            # everything waiting (up to _BATCH) is built and delivered together
            batch = [self._queue.get()]
            if batch[0] is not None and not self._hurry.is_set():
                self._hurry.wait(_LINGER)
            while len(batch) < _BATCH and batch[-1] is not None:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                steps: list[LineageStep] = []
                for event in batch:
                    if event is None:
                        break
                    try:
                        step = self.step(event)
                    except Exception as exc:
                        self._errors.inc()
                        log.error("building the OpenLineage event for %s of %s failed: %s: %s",
                                  event.kind, event.asset, type(exc).__name__, exc)
                        continue
                    if step is not None:
                        steps.append(step)
                self._deliver(steps, raise_errors=False)
                self._buffered.set(self._queue.qsize())
            except Exception as exc:  # a bug must not stop the thread (flush would hang)
                self._errors.inc(len(steps))
                log.error("delivering %d OpenLineage events failed: %s: %s", len(steps),
                          type(exc).__name__, exc)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if batch[-1] is None:
                return

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the buffer is empty (True) or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        self._hurry.set()
        try:
            while self._queue.unfinished_tasks:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
            return True
        finally:
            self._hurry.clear()

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is buffered (up to ``timeout``), stop the thread, close transport."""
        self.flush(timeout)
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)
        self.transport.close(timeout)

    def __repr__(self) -> str:
        return f"OpenLineageObserver(transport={self.kind!r}, delivery={self.delivery!r})"


def _state(state: RunState | None) -> str:
    return state.value if state is not None else "OTHER"


def _scatter(progress: dict[str, Any] | None) -> tuple[int, int, int] | None:
    """(total, succeeded, failed) of a scatter's last progress."""
    if not progress:
        return None

    def num(name: str) -> int:
        value = progress.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    failed = num("failed")
    succeeded = num("succeeded") or max(0, num("done") - failed)
    return num("total"), succeeded, failed


def _from_env() -> Transport:
    url = os.environ.get(URL_ENV, "").strip()
    path = os.environ.get(FILE_ENV, "").strip()
    if url and path:
        raise UsageError(f"set only one of {URL_ENV} and {FILE_ENV}")
    if url:
        return http_transport(url)
    if path:
        return file_transport(path)
    raise UsageError(
        f"OpenLineageObserver needs a transport: set {URL_ENV}=http://host:5000 (an "
        f"OpenLineage receiver) or {FILE_ENV}=/path/lineage.jsonl, or pass transport="
    )
