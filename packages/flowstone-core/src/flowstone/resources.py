"""Resources: connections and clients that assets use, built by the process that runs them.

Declare them on the pipeline (``resources={"db": Resource(setup=connect, teardown=close)}``
or a ready object), request them per asset (``requires=["db"]``) and use them as
``context.resources.db``. They are never sent through a queue: each worker builds its own,
lazily, on the first asset that needs them, and tears them down on shutdown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from flowstone.errors import ResourceError

__all__ = ["Resource", "ResourceManager", "Resources"]


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource built on demand.

    Args:
        setup: zero-argument function returning the resource object.
        teardown: called with the object on shutdown.
        health: called with the object; returns True when healthy (or raises).
    """

    setup: Callable[[], Any]
    teardown: Callable[[Any], None] | None = None
    health: Callable[[Any], bool] | None = None

    def __post_init__(self) -> None:
        if not callable(self.setup):
            raise ResourceError("Resource(setup=...) must be a zero-argument function")


class Resources(Mapping[str, Any]):
    """What ``context.resources`` is: a read-only mapping with attribute access."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        try:
            return self._items[key]
        except KeyError:
            raise ResourceError(
                f"resource {key!r} is not available to this asset; add it to the asset's "
                f"requires=[...] (available: {sorted(self._items) or 'none'})"
            ) from None

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class ResourceManager:
    """Builds each declared resource at most once per process and tears them down."""

    __slots__ = ("_built", "_defs", "_lock")

    def __init__(self, definitions: Mapping[str, Any]) -> None:
        self._defs = dict(definitions)
        self._built: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._defs)

    def get(self, name: str) -> Any:
        if name in self._built:
            return self._built[name]
        with self._lock:
            if name not in self._built:
                spec = self._defs[name]
                if isinstance(spec, Resource):
                    try:
                        self._built[name] = spec.setup()
                    except Exception as exc:
                        raise ResourceError(f"resource {name!r} failed to set up: {exc}") from exc
                else:
                    self._built[name] = spec
            return self._built[name]

    def for_asset(self, requires: tuple[str, ...]) -> Resources:
        return Resources({n: self.get(n) for n in requires})

    def health(self) -> dict[str, str]:
        """``{name: "ok" | "not built" | "error: ..."}`` without building anything."""
        report: dict[str, str] = {}
        for name, spec in self._defs.items():
            if name not in self._built:
                report[name] = "not built"
                continue
            check = spec.health if isinstance(spec, Resource) else None
            try:
                ok = True if check is None else bool(check(self._built[name]))
                report[name] = "ok" if ok else "error: health check returned False"
            except Exception as exc:
                report[name] = f"error: {exc}"
        return report

    def close(self) -> list[str]:
        """Tear down built resources in reverse order; return error messages (never raises)."""
        errors: list[str] = []
        with self._lock:
            for name in reversed(list(self._built)):
                spec = self._defs[name]
                if isinstance(spec, Resource) and spec.teardown is not None:
                    try:
                        spec.teardown(self._built[name])
                    except Exception as exc:
                        errors.append(f"resource {name!r} teardown failed: {exc}")
            self._built.clear()
        return errors
