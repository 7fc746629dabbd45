"""Observers that declare ``event_kinds`` get only those events, and the engine does not
build the others at all; a bad declaration fails when the pipeline is built."""

from __future__ import annotations

from typing import Any

import pytest

import flowstone as fs
from flowstone.errors import UsageError
from flowstone.events import Emitter, Event


class Picky:
    def __init__(self, kinds: Any) -> None:
        self.event_kinds = kinds
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)


class Everything:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)


@fs.asset
def source() -> int:
    return 1


@fs.asset
def doubled(source: int) -> int:
    return source * 2


def test_an_observer_gets_only_the_kinds_it_declared() -> None:
    picky = Picky({"asset.succeeded", "run.finished"})
    p = fs.Pipeline("kinds", [source, doubled], store="memory://", observers=[picky])
    assert p.run("doubled").status == "succeeded"
    assert [(e.kind, e.asset) for e in picky.events] == [
        ("asset.succeeded", "source"), ("asset.succeeded", "doubled"), ("run.finished", "")]


def test_events_nobody_asked_for_are_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    original = Emitter.send

    def counting(self: Emitter, event: Event) -> str | None:
        built.append(event.kind)
        return original(self, event)

    monkeypatch.setattr(Emitter, "send", counting)
    p = fs.Pipeline("kinds", [source, doubled], store="memory://",
                    observers=[Picky({"run.finished"})])
    assert p.run("doubled").status == "succeeded"
    assert built == ["run.finished"]


def test_an_observer_without_kinds_still_gets_everything() -> None:
    picky, everything = Picky({"run.finished"}), Everything()
    p = fs.Pipeline("kinds", [source, doubled], store="memory://",
                    observers=[picky, everything])
    assert p.run("doubled").status == "succeeded"
    kinds = {e.kind for e in everything.events}
    assert {"run.started", "asset.started", "io.stored", "lineage.recorded",
            "asset.succeeded", "run.finished"} <= kinds
    # events built for another observer may reach the picky one: it must ignore them
    assert "run.finished" in {e.kind for e in picky.events}


def test_attaching_an_observer_later_widens_the_kinds() -> None:
    emitter = Emitter("p", [Picky({"run.finished"})])
    assert emitter.emit("asset.started", "r", "a") is None
    late = Picky({"asset.started"})
    emitter.observers = (*emitter.observers, late)
    emitter.emit("asset.started", "r", "a")
    assert [e.kind for e in late.events] == ["asset.started"]


@pytest.mark.parametrize(("kinds", "message"), [
    ({"asset.finished"}, "unknown event kinds ['asset.finished']"),
    ("asset.started", "must be a set of event kinds"),
    (42, "must be a set of event kinds"),
])
def test_bad_kinds_fail_when_the_pipeline_is_built(kinds: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        fs.Pipeline("kinds", [source], store="memory://", observers=[Picky(kinds)])
