"""Turning ``Pipeline(...)`` arguments into the parts a :class:`~flowstone.runtime.Runtime`
is made of: the store, the IO managers, the executor and its coordinators, observers.

Everything is resolved here, once, when the pipeline is built: environment variables,
plugin names (looked up lazily in the :class:`~flowstone.registry.PluginRegistry`), and
the optional capabilities of what was chosen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowstone.errors import DefinitionError, PluginLoadError
from flowstone.protocols import (
    Executor,
    IOManager,
    Observer,
    ParallelCoordinator,
    PreferredCoordinators,
    RunStore,
    ScatterCoordinator,
)
from flowstone.registry import PluginRegistry, store_from_url

__all__ = [
    "Coordinators",
    "flowstone_home",
    "resolve_coordinators",
    "resolve_executor",
    "resolve_io_managers",
    "resolve_observers",
    "resolve_store",
]


def flowstone_home() -> Path:
    """Where the embedded setup keeps its SQLite file and values (``FLOWSTONE_HOME``)."""
    return Path(os.environ.get("FLOWSTONE_HOME", ".flowstone"))


def resolve_store(
    store: RunStore | str | None, registry: PluginRegistry
) -> tuple[str | None, RunStore]:
    """``(the URL it was built from or None, the store)``: a RunStore, a URL, or None for
    ``FLOWSTONE_DATABASE_URL``, else SQLite under ``FLOWSTONE_HOME``."""
    if store is None:
        store = os.environ.get("FLOWSTONE_DATABASE_URL") or (
            f"sqlite:///{flowstone_home() / 'flowstone.db'}"
        )
    if isinstance(store, str):
        return store, store_from_url(store, registry)
    if not isinstance(store, RunStore):
        try:  # names the missing members (e.g. a store written before a role was added)
            registry.check("flowstone.run_stores", store, plugin="store=")
        except PluginLoadError as exc:
            raise DefinitionError(
                f"store= must be a RunStore or a URL, got {type(store).__name__}: {exc}"
            ) from exc
        raise DefinitionError(f"store= must be a RunStore or a URL, got {type(store).__name__}")
    return None, store


def resolve_io_managers(
    given: Mapping[str, IOManager | str],
    store: RunStore,
    store_url: str | None,
    registry: PluginRegistry,
) -> dict[str, IOManager]:
    """The pipeline's IO managers by name; ``"default"`` is added when not given: the
    store's own ``default_io_manager()`` (values kept where the run state is)."""
    managers: dict[str, IOManager] = {}
    for name, spec in given.items():
        managers[name] = (
            registry.create("flowstone.io_managers", spec) if isinstance(spec, str) else spec
        )
        if not isinstance(managers[name], IOManager):
            raise DefinitionError(f"io_managers[{name!r}] is not an IOManager: {spec!r}")
    if "default" not in managers:
        managers["default"] = _default_io_manager(store)
    return managers


def _default_io_manager(store: RunStore) -> IOManager:
    """The store's declared home for values (:class:`~flowstone.protocols.DefaultIOManager`)."""
    created = store.default_io_manager()
    if not isinstance(created, IOManager):
        raise DefinitionError(
            f"{type(store).__name__}.default_io_manager() returned {created!r}, which is not "
            "an IOManager; fix the store, or pass Pipeline(io_managers={'default': ...})"
        )
    return created


def resolve_executor(executor: Executor | str | None, registry: PluginRegistry) -> Executor:
    """An Executor, a plugin name, or None for ``FLOWSTONE_EXECUTOR``, else in-process."""
    spec = executor or os.environ.get("FLOWSTONE_EXECUTOR") or "inprocess"
    created = registry.create("flowstone.executors", spec) if isinstance(spec, str) else spec
    if not isinstance(created, Executor):
        raise DefinitionError(f"executor= is not an Executor: {spec!r}")
    return created


@dataclass(frozen=True, slots=True)
class Coordinators:
    scatter: ScatterCoordinator
    parallel: ParallelCoordinator


def resolve_coordinators(
    executor: Executor,
    scatter: ScatterCoordinator | str | None,
    parallel: ParallelCoordinator | str | None,
    registry: PluginRegistry,
) -> Coordinators:
    """The coordinators given, else the ones the executor prefers (if that plugin is
    installed, see :class:`~flowstone.protocols.PreferredCoordinators`), else the
    in-process ones, which work with any executor."""
    prefers = executor if isinstance(executor, PreferredCoordinators) else None
    scatter_name = _preferred(
        registry, "flowstone.scatter_coordinators",
        prefers.scatter_coordinator if prefers else None, "inline",
    )  # fmt: skip
    parallel_name = _preferred(
        registry, "flowstone.parallel_coordinators",
        prefers.parallel_coordinator if prefers else None, "thread",
    )  # fmt: skip
    built_scatter = _create(registry, "flowstone.scatter_coordinators", scatter, scatter_name)
    built_parallel = _create(registry, "flowstone.parallel_coordinators", parallel, parallel_name)
    if not isinstance(built_scatter, ScatterCoordinator):
        raise DefinitionError(f"scatter_coordinator= is not a ScatterCoordinator: {scatter!r}")
    if not isinstance(built_parallel, ParallelCoordinator):
        raise DefinitionError(f"parallel_coordinator= is not a ParallelCoordinator: {parallel!r}")
    return Coordinators(built_scatter, built_parallel)


def _preferred(registry: PluginRegistry, group: str, preferred: str | None, fallback: str) -> str:
    if preferred is not None and preferred in registry.names(group):
        return preferred
    return fallback


def _create(registry: PluginRegistry, group: str, spec: Any, default: str) -> Any:
    if spec is None:
        spec = default
    return registry.create(group, spec) if isinstance(spec, str) else spec


def resolve_observers(
    observers: Sequence[Observer | str], registry: PluginRegistry
) -> tuple[Observer, ...]:
    """Observers given as objects or plugin names (``flowstone.observers``)."""
    out: list[Observer] = []
    for spec in observers:
        created = registry.create("flowstone.observers", spec) if isinstance(spec, str) else spec
        if not isinstance(created, Observer):
            raise DefinitionError(f"observers: {spec!r} is not an Observer (needs on_event)")
        out.append(created)
    return tuple(out)
