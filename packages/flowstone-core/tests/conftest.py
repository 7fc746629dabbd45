"""Shared fixtures for the engine's end-to-end tests.

Every pipeline built through ``make_pipeline`` runs against both in-process run stores
(memory and SQLite) and is closed after the test. ``FLOWSTONE_HOME`` points into the
test's ``tmp_path`` so nothing is ever written into the repository.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs
from flowstone.records import StepRecord
from flowstone.registry import PluginRegistry


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSTONE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLOWSTONE_DATABASE_URL", raising=False)
    monkeypatch.delenv("FLOWSTONE_EXECUTOR", raising=False)


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A run-store URL: the memory store, or a SQLite file in ``tmp_path``."""
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path}/fs.db"


PipelineFactory = Callable[..., fs.Pipeline]


@pytest.fixture(scope="session")
def registry() -> PluginRegistry:
    """One registry for the session: scanning entry points is the slow part of building a
    Pipeline, and what it finds cannot change while the tests run."""
    return PluginRegistry()


@pytest.fixture
def make_pipeline(store_url: str, registry: PluginRegistry) -> Iterator[PipelineFactory]:
    """Build pipelines on the parametrized store; every one is closed at teardown."""
    built: list[fs.Pipeline] = []

    def make(assets: list[fs.AssetDef], name: str = "test", **kwargs: Any) -> fs.Pipeline:
        kwargs.setdefault("store", store_url)
        kwargs.setdefault("registry", registry)
        p = fs.Pipeline(name, assets, **kwargs)
        built.append(p)
        return p

    yield make
    for p in built:
        p.close()


class Counter:
    """Thread-safe call counter per key, plus the peak of concurrently active calls."""

    def __init__(self) -> None:
        self.calls: dict[Any, int] = {}
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def hit(self, key: Any = None) -> int:
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            return self.calls[key]

    def enter(self) -> None:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)

    def leave(self) -> None:
        with self._lock:
            self.active -= 1

    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())


@pytest.fixture
def counter() -> Counter:
    return Counter()


class Collect:
    """A non-blocking executor that keeps the steps dispatched to it."""

    name = "collect"
    blocking = False

    def __init__(self) -> None:
        self.steps: list[StepRecord] = []

    def dispatch(self, runner: Any, run_id: str, steps: Sequence[StepRecord]) -> None:
        self.steps.extend(steps)

    def close(self) -> None:
        return None


class Recorder:
    """An observer that keeps every event."""

    def __init__(self) -> None:
        self.events: list[fs.Event] = []
        self._lock = threading.Lock()

    def on_event(self, event: fs.Event) -> None:
        with self._lock:
            self.events.append(event)

    def kinds(self, run_id: str | None = None) -> list[str]:
        with self._lock:
            return [e.kind for e in self.events if run_id is None or e.run_id == run_id]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
