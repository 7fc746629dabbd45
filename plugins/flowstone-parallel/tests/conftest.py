"""Pipelines on the core's in-process stores (memory and SQLite) with this coordinator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs
from flowstone.registry import PluginRegistry

PipelineFactory = Callable[..., fs.Pipeline]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSTONE_HOME", str(tmp_path / "home"))
    for key in ("FLOWSTONE_DATABASE_URL", "FLOWSTONE_EXECUTOR", "FLOWSTONE_BROKER_URL"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def registry() -> PluginRegistry:
    return PluginRegistry()


@pytest.fixture(params=["memory", "sqlite"])
def make_pipeline(
    request: pytest.FixtureRequest, tmp_path: Path, registry: PluginRegistry
) -> Iterator[PipelineFactory]:
    """Build pipelines that join through the ``celery`` parallel coordinator."""
    store = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/fs.db"
    built: list[fs.Pipeline] = []

    def make(assets: list[fs.AssetDef], **kwargs: Any) -> fs.Pipeline:
        kwargs.setdefault("store", store)
        kwargs.setdefault("registry", registry)
        kwargs.setdefault("parallel_coordinator", "celery")
        p = fs.Pipeline("par", assets, **kwargs)
        built.append(p)
        return p

    yield make
    for p in built:
        p.close()
