"""Events FlowStone emits to observers, and the one :class:`Emitter` that sends them.

Every event has ``kind`` (an :data:`EventKind`), ``at`` (UTC), ``pipeline``, ``run_id``,
``asset`` and ``partition`` (encoded; "" when unpartitioned or not about an asset) and a
``data`` mapping of JSON-able details. Kinds, and what ``data`` carries:

=====================  ==============================================================
``run.started``        ``targets``, ``partition``
``run.finished``       ``status``
``asset.started``      ``attempt``; ``queued_s`` (seconds the step waited ``ready`` before
                       this claim, by the store's clock; None for a take-over or a
                       step claimed elsewhere) and ``takeover`` (True when the claim
                       took over another owner's expired lease)
``asset.succeeded``    ``duration_s``, ``materialization_id``
``asset.failed``       ``duration_s``, ``error``, ``materialization_id``
``asset.skipped``      ``duration_s``, ``error`` (the reason), ``materialization_id``
``asset.retrying``     ``attempt``, ``delay_s``, ``error``
``asset.waiting``      ``on`` (``approval``, ``gate`` or ``deferred``)
``io.stored``          ``io_manager``, ``location``, ``staged``
``io.loaded``          ``io_manager``, ``count``
``route.decided``      ``branch``
``approval.requested`` ``duration_s``
``approval.decided``   ``approval_id``, ``status``, ``by``
``gate.opened``        ``duration_s``
``gate.signaled``      (nothing)
``gate.expired``       (nothing)
``scatter.progress``   ``succeeded``, ``failed``; ``total`` (in-process, all so far) or
                       ``chunk`` (Celery: the counts of one finished chunk)
``lineage.recorded``   ``upstream`` (materialization ids)
``observer.failed``    ``observer``, ``failed_kind``, ``error``
=====================  ==============================================================

Events are built only when someone listens: a pipeline without observers pays one
attribute check per event, and an event of a kind no observer asked for (an observer's
optional ``event_kinds`` attribute, see :class:`~flowstone.protocols.Observer`) one set lookup.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

from flowstone.errors import UsageError

if TYPE_CHECKING:
    from flowstone.protocols import Observer

__all__ = ["EVENT_KINDS", "Emitter", "Event", "EventKind"]

log = logging.getLogger("flowstone")

EventKind = Literal[
    "run.started",
    "run.finished",
    "asset.started",
    "asset.succeeded",
    "asset.failed",
    "asset.skipped",
    "asset.retrying",
    "asset.waiting",
    "io.stored",
    "io.loaded",
    "route.decided",
    "approval.requested",
    "approval.decided",
    "gate.opened",
    "gate.signaled",
    "gate.expired",
    "scatter.progress",
    "lineage.recorded",
    "observer.failed",
]

EVENT_KINDS: frozenset[str] = frozenset(get_args(EventKind))


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened. ``data`` holds kind-specific JSON-able details
    (e.g. ``duration_s``, ``error``, ``upstream``, ``branch``, ``done``/``total``)."""

    kind: EventKind
    pipeline: str
    run_id: str
    asset: str = ""
    partition: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _kinds_of(observer: Observer) -> frozenset[str] | None:
    """The event kinds ``observer`` asked for (None: all); a bad ``event_kinds`` is a
    UsageError."""
    kinds = getattr(observer, "event_kinds", None)
    if kinds is None:
        return None
    if (isinstance(kinds, str) or not isinstance(kinds, Collection)
            or not all(isinstance(k, str) for k in kinds)):
        raise UsageError(f"observer {observer!r}: event_kinds must be a set of event kinds "
                         f"(or None for all), got {kinds!r}")
    unknown = sorted(set(kinds) - EVENT_KINDS)
    if unknown:
        raise UsageError(f"observer {observer!r} asks for unknown event kinds {unknown}; "
                         f"known kinds: {sorted(EVENT_KINDS)}")
    return frozenset(kinds)


class Emitter:
    """Hands events of one pipeline to its observers.

    An observer that raises is logged and counted (``stats["observer_errors"]``, or
    ``"lineage_errors"`` for a ``lineage.recorded`` event), never stops the others, and
    is reported to the other observers as an ``observer.failed`` event.
    """

    __slots__ = ("_listening", "_lock", "pipeline", "stats")

    def __init__(self, pipeline: str, observers: Sequence[Observer] = ()) -> None:
        self.pipeline = pipeline
        self.observers = tuple(observers)
        self.stats: dict[str, int] = {"observer_errors": 0, "lineage_errors": 0}
        self._lock = threading.Lock()

    @property
    def observers(self) -> tuple[Observer, ...]:
        """Who receives the events (settable: an observer may be attached later)."""
        return self._listening[0]

    @observers.setter
    def observers(self, observers: Sequence[Observer]) -> None:
        observers = tuple(observers)
        wanted: set[str] | None = set()
        for observer in observers:
            kinds = _kinds_of(observer)
            if kinds is None or wanted is None:
                wanted = None  # someone wants every kind
            else:
                wanted.update(kinds)
        # one attribute: an emitting thread sees the old pair or the new one, never a mix
        self._listening: tuple[tuple[Observer, ...], frozenset[str] | None] = (
            observers, None if wanted is None else frozenset(wanted))

    def __bool__(self) -> bool:
        return bool(self._listening[0])

    def emit(
        self,
        kind: EventKind,
        run_id: str,
        asset: str = "",
        partition: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Send one event; return the last observer failure as text (None: all fine)."""
        observers, wanted = self._listening
        if not observers or (wanted is not None and kind not in wanted):
            return None
        return self.send(Event(kind, self.pipeline, run_id, asset, partition, dict(data or {})))

    def send(self, event: Event) -> str | None:
        """Send a built event (see :meth:`emit`)."""
        error = None
        for observer in self._listening[0]:
            try:
                observer.on_event(event)
            except Exception as exc:
                error = f"{type(observer).__name__}: {exc}"
                self._failed(observer, event, error)
        return error

    def _failed(self, failed: Observer, event: Event, error: str) -> None:
        lineage = event.kind == "lineage.recorded"
        with self._lock:
            key = "lineage_errors" if lineage else "observer_errors"
            self.stats[key] = self.stats.get(key, 0) + 1
        what = "lineage observer" if lineage else "observer"
        log.exception("%s %r failed on %s of %s", what, failed, event.kind, event.asset)
        if event.kind == "observer.failed":
            return  # never report a report: a failing observer cannot loop
        notice = Event(
            "observer.failed",
            self.pipeline,
            event.run_id,
            event.asset,
            event.partition,
            {"observer": type(failed).__name__, "failed_kind": event.kind, "error": error},
        )
        for other in self.observers:
            if other is not failed:
                try:
                    other.on_event(notice)
                except Exception:
                    log.exception("observer %r failed on observer.failed", other)

    def lineage(
        self, run_id: str, asset: str, partition: str, upstream: Sequence[str]
    ) -> str | None:
        """Send ``lineage.recorded``; return an error description if an observer failed."""
        if not self._listening[0]:
            return None
        return self.emit("lineage.recorded", run_id, asset, partition, {"upstream": list(upstream)})
