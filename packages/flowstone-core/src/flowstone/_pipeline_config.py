"""The part of :class:`~flowstone.Pipeline` that reads its runtime's configuration:
coordinators, policies, observers, IO managers, and the health of what it runs on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowstone.events import Emitter
    from flowstone.protocols import (
        IOManager,
        Observer,
        ParallelCoordinator,
        RunStore,
        ScatterCoordinator,
    )
    from flowstone.resources import ResourceManager
    from flowstone.runtime import Runtime

__all__ = ["RuntimeView"]


class RuntimeView:
    """Read-only views of the :class:`~flowstone.runtime.Runtime`, and ``health()``."""

    runtime: Runtime
    events: Emitter
    store: RunStore
    resources: ResourceManager

    @property
    def scatter_coordinator(self) -> ScatterCoordinator:
        return self.runtime.scatter_coordinator

    @property
    def parallel_coordinator(self) -> ParallelCoordinator:
        return self.runtime.parallel_coordinator

    @property
    def lease_seconds(self) -> float:
        return self.runtime.policies.lease_seconds

    @property
    def route_retention(self) -> float:
        return self.runtime.policies.route_retention

    @property
    def on_lineage_error(self) -> str:
        return self.runtime.policies.on_lineage_error

    @property
    def observers(self) -> tuple[Observer, ...]:
        return self.events.observers

    @property
    def stats(self) -> dict[str, int]:
        """``observer_errors`` and ``lineage_errors`` counted by the emitter."""
        return self.events.stats

    @property
    def default_io_manager(self) -> str:
        return self.runtime.values.default

    def io_manager(self, name: str) -> IOManager:
        return self.runtime.values.manager(name)

    @property
    def io_manager_names(self) -> tuple[str, ...]:
        """The names of this pipeline's IO managers (``io_manager(name)`` gets one)."""
        return self.runtime.values.names

    def health(self) -> dict[str, Any]:
        """``{"ok": bool, "store": ..., "executor": ..., "resources": {...}}``."""
        report: dict[str, Any] = {}
        try:
            self.store.ping()
            report["store"] = "ok"
        except Exception as exc:
            report["store"] = f"error: {exc}"
        check = self.runtime.capabilities.executor_health
        report["executor"] = check.health() if check is not None else "ok"
        report["resources"] = self.resources.health()
        report["ok"] = (
            report["store"] == "ok"
            and _healthy(report["executor"])
            and all(v in ("ok", "not built") for v in report["resources"].values())
        )
        return report


def _healthy(value: Any) -> bool:
    if isinstance(value, Mapping):
        return bool(value.get("ok", True))
    return bool(value == "ok")
