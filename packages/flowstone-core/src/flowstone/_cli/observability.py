"""How core commands reach flowstone-observability without importing it.

``flowstone daemon --metrics-port`` and ``flowstone health`` look up the ``prometheus``
plugin of the ``flowstone.observers`` group (the core stays stdlib-only). That observer
also serves ``/metrics`` and ``/healthz`` for pipelines (:class:`Operations`); without the
plugin, ``--metrics-port`` is a usage error naming the ``pip install`` that fixes it, and
``flowstone health`` runs the core checks only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from flowstone.errors import PluginNotFoundError, UsageError
from flowstone.registry import PluginRegistry

__all__ = ["HealthResult", "MetricsServing", "Operations", "find_operations"]

_GROUP = "flowstone.observers"
_NAME = "prometheus"


class MetricsServing(Protocol):
    """A running ``/metrics`` + ``/healthz`` endpoint."""

    @property
    def url(self) -> str:
        """``http://host:port`` it serves on."""
        ...

    def tick(self, report: Any) -> None:
        """Record one daemon tick (heartbeat, sweep and recovery counters)."""
        ...

    def close(self) -> None: ...


class HealthResult(Protocol):
    """A health report: ``ok``, ``to_json()``, ``to_text()``."""

    @property
    def ok(self) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...

    def to_text(self) -> str: ...


@runtime_checkable
class Operations(Protocol):
    """What the ``prometheus`` observer plugin offers core commands."""

    def serve(
        self, pipelines: Sequence[Any], *, port: int, host: str, role: str
    ) -> MetricsServing: ...

    def health(self, pipelines: Sequence[Any]) -> HealthResult: ...


def find_operations(*, required_for: str | None = None) -> Operations | None:
    """The installed plugin's operations; None when it is not installed, unless
    ``required_for`` names the option that needs it (then a UsageError says what to
    install)."""
    try:
        plugin = PluginRegistry().create(_GROUP, _NAME)
    except PluginNotFoundError as exc:
        if required_for is None:
            return None
        raise UsageError(
            f"{required_for} needs flowstone-observability. Fix: pip install "
            "flowstone-observability"
        ) from exc
    if not isinstance(plugin, Operations):
        raise UsageError(
            f"the {_GROUP} plugin {_NAME!r} ({type(plugin).__name__}) cannot serve metrics or "
            "check health. Fix: pip install -U flowstone-observability"
        )
    return plugin
