"""``@asset`` and ``@router``: plain functions that each produce one named piece of data.

Dependencies come from parameter names: ``def doubled(numbers)`` depends on ``numbers``.
A parameter named ``context`` (or annotated :class:`~flowstone.context.Context`) receives
the run context instead. The decorated object still calls as the plain function, so unit
tests can call ``doubled([1, 2])`` directly.
"""

from __future__ import annotations

import difflib
import inspect
import keyword
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, TypedDict, Unpack, overload

from flowstone.errors import DefinitionError, DependencyError
from flowstone.outcomes import to_seconds
from flowstone.parallel import Parallel
from flowstone.retry import RetryPolicy
from flowstone.scatter import Scatter

__all__ = ["AssetDef", "AssetOptions", "asset", "router"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
NO_RETRY: Final = RetryPolicy()
_PARALLEL_PARAMS: Final = frozenset({"branches", "input"})


def validate_name(name: str, *, what: str) -> str:
    """Asset/resource names are identifiers (they appear in paths, SQL rows and CLI)."""
    if not isinstance(name, str) or not _NAME.match(name) or keyword.iskeyword(name):
        raise DefinitionError(
            f"{what} name {name!r} is not valid: use a Python identifier of at most 128 "
            "characters (letters, digits, underscores; not starting with a digit)"
        )
    return name


@dataclass(frozen=True, slots=True, eq=False)
class AssetDef:
    """A validated asset definition. Call it like the function it wraps."""

    name: str
    fn: Callable[..., Any]
    params: tuple[str, ...]
    deps: tuple[str, ...]
    optional_deps: frozenset[str] = frozenset()
    context_param: str | None = None
    accepts_kwargs: bool = False
    requires: tuple[str, ...] = ()
    io_manager: str | None = None
    partitions: Any = None
    partition_mappings: Mapping[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = NO_RETRY
    timeout: float | None = None
    description: str | None = None
    router_branches: tuple[str, ...] | None = None
    routed_from: str | None = None
    scatter: Scatter | None = None
    parallel: Parallel | None = None
    on_signal: Callable[..., Any] | None = None
    on_timeout: Callable[..., Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    join_params: frozenset[str] = frozenset()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<AssetDef {self.name} deps={list(self.deps)}>"

    @property
    def is_router(self) -> bool:
        return self.router_branches is not None

    @property
    def upstream(self) -> tuple[str, ...]:
        """Every asset this one waits for: deps, its router, its parallel branch finals."""
        extra: list[str] = []
        if self.routed_from and self.routed_from not in self.deps:
            extra.append(self.routed_from)
        if self.parallel:
            extra.extend(f for f in self.parallel.branches.values() if f not in self.deps)
        return self.deps + tuple(dict.fromkeys(extra))

    def param_defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.fn)
        return {
            n: p.default
            for n, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty
        }


def _is_context_param(param: inspect.Parameter) -> bool:
    if param.name == "context":
        return True
    ann = param.annotation
    return ann == "Context" or getattr(ann, "__name__", None) == "Context"


class AssetOptions(TypedDict, total=False):
    """Every option ``@asset(...)`` takes, written once (see :func:`asset` for each)."""

    name: str | None
    deps: Iterable[str] | None
    optional_deps: Collection[str]
    requires: Iterable[str]
    io_manager: str | None
    partitions: Any
    partition_mappings: Mapping[str, Any] | None
    retry: RetryPolicy | None
    timeout: float | timedelta | None
    description: str | None
    routed_from: str | None
    scatter: Scatter | None
    parallel: Parallel | None
    on_signal: Callable[..., Any] | None
    on_timeout: Callable[..., Any] | None
    metadata: Mapping[str, Any] | None


_OPTIONS: Final = frozenset(AssetOptions.__annotations__)


def _check_options(options: Mapping[str, Any], allowed: Collection[str], what: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(allowed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DefinitionError(
            f"{what} got unknown option {unknown[0]!r}{hint}; it takes {sorted(allowed)}"
        )


def _build(
    fn: Callable[..., Any],
    options: AssetOptions,
    *,
    router_branches: Iterable[str] | None = None,
) -> AssetDef:
    _check_options(options, _OPTIONS, "@asset")
    name = options.get("name")
    deps = options.get("deps")
    optional_deps = options.get("optional_deps", ())
    requires = options.get("requires", ())
    io_manager = options.get("io_manager")
    partitions = options.get("partitions")
    partition_mappings = options.get("partition_mappings")
    retry = options.get("retry")
    timeout = options.get("timeout")
    description = options.get("description")
    routed_from = options.get("routed_from")
    scatter = options.get("scatter")
    parallel = options.get("parallel")
    on_signal = options.get("on_signal")
    on_timeout = options.get("on_timeout")
    metadata = options.get("metadata")
    if not callable(fn):
        raise DefinitionError(f"@asset must decorate a function, got {type(fn).__name__}")
    asset_name = validate_name(name or str(getattr(fn, "__name__", "")), what="asset")
    where = f"asset {asset_name!r}"
    sig = inspect.signature(fn)
    params: list[str] = []
    context_param: str | None = None
    accepts_kwargs = False
    join_params: set[str] = set()
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_kwargs = True
            continue
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            raise DefinitionError(f"{where}: *{p.name} is not supported; name each dependency")
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise DefinitionError(
                f"{where}: positional-only parameter {p.name!r} cannot receive a dependency; "
                "remove the '/'"
            )
        if _is_context_param(p):
            context_param = p.name
            continue
        if parallel is not None and p.name in _PARALLEL_PARAMS:
            join_params.add(p.name)
            continue
        params.append(p.name)
    all_deps = list(params)
    for d in deps or ():
        if d not in all_deps:
            all_deps.append(d)
    for d in all_deps:
        validate_name(d, what=f"{where}: dependency")
    opt = frozenset(optional_deps)
    bad_opt = sorted(opt - set(all_deps))
    if bad_opt:
        raise DependencyError(
            f"{where}: optional_deps {bad_opt} are not dependencies of the asset; "
            f"add them as parameters (e.g. def {asset_name}({bad_opt[0]}=None)) or to deps="
        )
    if len(set(all_deps)) != len(all_deps):
        raise DependencyError(f"{where}: duplicate dependencies in {all_deps}")
    if asset_name in all_deps:
        raise DependencyError(f"{where} depends on itself")
    req = tuple(requires)
    for r in req:
        validate_name(r, what=f"{where}: resource")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise DefinitionError(
            f"{where}: retry= must be a RetryPolicy(...), got {type(retry).__name__}"
        )
    if scatter is not None and not isinstance(scatter, Scatter):
        raise DefinitionError(
            f"{where}: scatter= must be a Scatter(...), got {type(scatter).__name__}"
        )
    if parallel is not None and not isinstance(parallel, Parallel):
        raise DefinitionError(
            f"{where}: parallel= must be a Parallel(...), got {type(parallel).__name__}"
        )
    if scatter is not None:
        _check_scatter_params(scatter, all_deps, where)
    if scatter is not None and parallel is not None:
        raise DefinitionError(f"{where}: an asset cannot be both scatter= and parallel=")
    if routed_from is not None:
        validate_name(routed_from, what=f"{where}: routed_from")
    branches: tuple[str, ...] | None = None
    if router_branches is not None:
        branches = tuple(router_branches)
        if not branches:
            raise DefinitionError(f"router {asset_name!r} needs at least one branch")
        for b in branches:
            validate_name(b, what=f"router {asset_name!r}: branch")
        if len(set(branches)) != len(branches):
            raise DefinitionError(f"router {asset_name!r}: duplicate branches in {list(branches)}")
    for hook, label in ((on_signal, "on_signal"), (on_timeout, "on_timeout")):
        if hook is not None and not callable(hook):
            raise DefinitionError(
                f"{where}: {label}= must be a function (context, payload) -> value"
            )
    mappings = dict(partition_mappings or {})
    unknown_map = sorted(set(mappings) - set(all_deps))
    if unknown_map:
        raise DependencyError(
            f"{where}: partition_mappings names {unknown_map}, which are not dependencies"
        )
    return AssetDef(
        name=asset_name,
        fn=fn,
        params=tuple(params),
        deps=tuple(all_deps),
        optional_deps=opt,
        context_param=context_param,
        accepts_kwargs=accepts_kwargs,
        requires=req,
        io_manager=io_manager,
        partitions=partitions,
        partition_mappings=mappings,
        retry=retry or NO_RETRY,
        timeout=to_seconds(timeout, what=f"{where}: timeout"),
        description=description if description is not None else inspect.getdoc(fn),
        router_branches=branches,
        routed_from=routed_from,
        scatter=scatter,
        parallel=parallel,
        on_signal=on_signal,
        on_timeout=on_timeout,
        metadata=dict(metadata or {}),
        join_params=frozenset(join_params),
    )


def _check_scatter_params(scatter: Scatter, deps: list[str], where: str) -> None:
    """Scatter's ``items`` and ``batch_input`` receive deps by parameter name: a required
    parameter that is not a dependency would only fail at run time, so fail here."""
    hooks = [("items", scatter.items)]
    if scatter.batching is not None:
        hooks.append(("batch_input", scatter.batching.batch_input))
    for label, fn in hooks:
        if fn is None:
            continue
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # builtins without a signature: checked at run time
            continue
        missing = [
            p.name
            for p in params
            if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            and p.name not in deps
        ]
        if missing:
            raise DependencyError(
                f"{where}: Scatter {label}= takes {missing}, which are not dependencies of the "
                f"asset; add them as parameters (def ...({missing[0]}, ...)) or to deps="
            )


@overload
def asset(fn: Callable[..., Any], /) -> AssetDef: ...


@overload
def asset(
    fn: None = None, /, **options: Unpack[AssetOptions]
) -> Callable[[Callable[..., Any]], AssetDef]: ...


def asset(
    fn: Callable[..., Any] | None = None, /, **options: Unpack[AssetOptions]
) -> AssetDef | Callable[[Callable[..., Any]], AssetDef]:
    """Declare an asset. Works bare (``@asset``) and called (``@asset(retry=...)``).

    Args:
        name: asset name (default: the function name).
        deps: extra dependencies that are not parameters (waited for; passed only to a
            ``**kwargs`` parameter).
        optional_deps: deps that may be skipped (e.g. unselected route branches); the
            parameter then gets its default.
        requires: names of pipeline resources the asset uses (``context.resources``).
        io_manager: name of the pipeline IO manager storing this asset's value.
        partitions: a partition set (``DailyPartitions(...)``); None accepts any key.
        partition_mappings: ``{dep: mapping}`` e.g. ``TimeWindowOffset(-1)``.
        retry: a :class:`RetryPolicy`.
        timeout: seconds or timedelta one attempt may run.
        routed_from: the router whose decision selects this asset.
        scatter: a :class:`~flowstone.scatter.Scatter` to fan out over items.
        parallel: a :class:`~flowstone.parallel.Parallel` joining branches.
        on_signal: ``(context, payload) -> value`` called when a signal gate is signalled.
        on_timeout: ``(context) -> value`` called when a signal gate expires (default: fail).
        metadata: free-form JSON-able metadata recorded with every materialization.

    Example:
        >>> @asset
        ... def numbers():
        ...     return [1, 2, 3]
    """

    def wrap(f: Callable[..., Any]) -> AssetDef:
        return _build(f, options)

    if fn is not None:
        return wrap(fn)
    return wrap


def router(
    *,
    branches: Iterable[str],
    name: str | None = None,
    deps: Iterable[str] | None = None,
    requires: Iterable[str] = (),
    partitions: Any = None,
    retry: RetryPolicy | None = None,
    timeout: float | timedelta | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], AssetDef]:
    """Declare a router: its function returns the name of the branch to run.

    The decision is persisted once per (run, router, partition) and replayed, never
    re-evaluated. Assets declared with ``routed_from=<router>`` that were not chosen are
    recorded ``skipped``.

    Example:
        >>> @router(branches=["small", "large"])
        ... def size(order):
        ...     return "small" if order["total"] < 100 else "large"
    """
    branch_list = tuple(branches) if not isinstance(branches, str) else (branches,)

    options: AssetOptions = {
        "name": name, "deps": deps, "requires": requires, "partitions": partitions,
        "retry": retry, "timeout": timeout, "description": description,
    }  # fmt: skip

    def wrap(f: Callable[..., Any]) -> AssetDef:
        return _build(f, options, router_branches=branch_list)

    return wrap
