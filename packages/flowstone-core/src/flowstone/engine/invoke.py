"""Calling asset functions: argument binding and per-attempt timeouts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from flowstone.asset import AssetDef
from flowstone.context import Context
from flowstone.errors import AssetTimeoutError

__all__ = ["bind_arguments", "call_with_timeout"]


def bind_arguments(
    a: AssetDef,
    values: Mapping[str, Any],
    context: Context,
    *,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``a.fn``: each parameter gets its dep's value (optional deps
    that did not run get the parameter's default), ``context`` the context, and a
    ``**kwargs`` parameter receives the ``deps=`` that are not parameters."""
    defaults: dict[str, Any] | None = None
    kwargs: dict[str, Any] = dict(extra or {})
    for p in a.params:
        if p in values:
            kwargs[p] = values[p]
        else:
            if defaults is None:
                defaults = a.param_defaults()
            kwargs[p] = defaults.get(p)
    if a.accepts_kwargs:
        for d in a.deps:
            if d not in a.params and d in values:
                kwargs[d] = values[d]
    if a.context_param is not None:
        kwargs[a.context_param] = context
    return kwargs


def call_with_timeout(
    fn: Callable[..., Any], kwargs: Mapping[str, Any], *, timeout: float | None, what: str
) -> Any:
    """Run ``fn(**kwargs)``; with a timeout, in a helper thread.

    Python cannot kill a thread: on timeout the attempt is failed at once and the
    abandoned call finishes (or not) in the background; its result is discarded.
    """
    if timeout is None:
        return fn(**kwargs)
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn(**kwargs)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc
        finally:
            done.set()

    t = threading.Thread(target=target, name=f"flowstone-{what}", daemon=True)
    t.start()
    if not done.wait(timeout):
        raise AssetTimeoutError(
            f"{what} ran longer than its timeout of {timeout:g}s; raise timeout= on the asset "
            "or make it faster"
        )
    if "error" in box:
        raise box["error"]
    return box["value"]
