"""Find plugins by name: built-ins registered in code, the rest through entry points.

A plugin is a callable registered under a name in one of :data:`GROUPS`; what calling it
returns depends on the group (see ``docs/plugins.md``)::

    registry = PluginRegistry()
    store = registry.create("flowstone.run_stores", "sqlite", "sqlite:///runs.db")
    store = store_from_url("postgresql+asyncpg://app@db/flowstone")

Nothing happens at import time. A :class:`PluginRegistry` reads a group's entry points the
first time that group is asked for and imports a plugin only when that name is asked for,
so a broken plugin never breaks lookups of other names. Lookup problems raise
:class:`~flowstone.errors.PluginNotFoundError` (naming the installed plugins and the
``pip install`` that fixes it) or :class:`~flowstone.errors.PluginLoadError` (import
failure, wrong shape, or two sources for one name).
"""

from __future__ import annotations

import difflib
import importlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Final, Literal, overload

from flowstone._internal.versions import declared_requirement, satisfies
from flowstone._version import __version__
from flowstone.errors import FlowStoneError, PluginLoadError, PluginNotFoundError, UsageError
from flowstone.protocols import (
    Executor,
    IOManager,
    ItemReader,
    Observer,
    ParallelCoordinator,
    RunStore,
    ScatterCoordinator,
)

__all__ = [
    "BUILTIN_DISTRIBUTION",
    "GROUPS",
    "PluginInfo",
    "PluginRegistry",
    "known_provider",
    "store_from_url",
]

GROUPS: Final = (
    "flowstone.io_managers",
    "flowstone.run_stores",
    "flowstone.executors",
    "flowstone.scatter_coordinators",
    "flowstone.parallel_coordinators",
    "flowstone.item_readers",
    "flowstone.observers",
    "flowstone.cli",
)
"""Every entry-point group FlowStone reads."""

BUILTIN_DISTRIBUTION: Final = "flowstone-core (built-in)"

# (group, name, "module:attr"); imported only when that name is asked for.
_BUILTINS: Final = (
    ("flowstone.io_managers", "memory", "flowstone.defaults.memory_io:MemoryIOManager"),
    ("flowstone.io_managers", "filesystem", "flowstone.defaults.filesystem_io:FilesystemIOManager"),
    ("flowstone.io_managers", "sqlite", "flowstone.defaults.sqlite_io:SQLiteIOManager"),
    ("flowstone.run_stores", "memory", "flowstone.registry:_memory_run_store"),
    ("flowstone.run_stores", "sqlite", "flowstone.registry:_sqlite_run_store"),
    ("flowstone.executors", "inprocess", "flowstone.defaults.inprocess_executor:InProcessExecutor"),
    (
        "flowstone.scatter_coordinators",
        "inline",
        "flowstone.defaults.inline_scatter:InlineScatterCoordinator",
    ),
    (
        "flowstone.parallel_coordinators",
        "thread",
        "flowstone.defaults.inline_parallel:InlineParallelCoordinator",
    ),
    ("flowstone.item_readers", "iterable", "flowstone.readers:Iterable"),
    ("flowstone.item_readers", "jsonlines", "flowstone.readers:JsonLines"),
    ("flowstone.item_readers", "csv", "flowstone.readers:Csv"),
    ("flowstone.observers", "logging", "flowstone.defaults.logging_observer:LoggingObserver"),
)

# Which distribution provides a well-known plugin: (group or "*", name, distribution).
_KNOWN_PLUGINS: Final = (
    ("flowstone.scatter_coordinators", "celery", "flowstone-scatter"),
    ("flowstone.parallel_coordinators", "celery", "flowstone-parallel"),
    ("*", "celery", "flowstone-celery"),
    ("flowstone.cli", "worker", "flowstone-celery"),
    ("flowstone.cli", "db", "flowstone-io-postgres"),
    ("flowstone.cli", "ui", "flowstone-ui"),
    ("*", "postgres", "flowstone-io-postgres"),
    ("*", "s3", "flowstone-io-s3"),
    ("*", "dynamodb", "flowstone-io-s3"),
    ("*", "prometheus", "flowstone-observability"),
    ("*", "openlineage", "flowstone-observability"),
)


def known_provider(group: str, name: str) -> str | None:
    """The distribution that provides the well-known plugin ``name`` of ``group``, if any."""
    return next((dist for g, n, dist in _KNOWN_PLUGINS if n == name and g in (group, "*")), None)


def _check_core_version(
    group: str, name: str, info: PluginInfo, point: metadata.EntryPoint
) -> None:
    """Refuse a plugin whose distribution declares a flowstone-core range this core is not in.

    Read from the distribution's ``Requires-Dist``, before anything of the plugin is
    imported, so a plugin built for another core fails with the versions named instead of
    with whatever its first incompatible call would raise.
    """
    dist = point.dist
    if dist is None:
        return  # a built-in, or an entry point without a distribution
    wanted = declared_requirement(dist.requires, "flowstone-core")
    if not wanted or satisfies(__version__, wanted):
        return
    raise PluginLoadError(
        f"{group} plugin {name!r} ({info.source()}) needs flowstone-core{wanted}, but "
        f"flowstone-core {__version__} is installed. Fix: install a {dist.name} release made "
        f"for flowstone-core {__version__}, or pip install 'flowstone-core{wanted}'."
    )


# What calling a plugin of each group must return (cli plugins return nothing).
_SHAPES: Final[dict[str, type | None]] = {
    "flowstone.io_managers": IOManager,
    "flowstone.run_stores": RunStore,
    "flowstone.executors": Executor,
    "flowstone.scatter_coordinators": ScatterCoordinator,
    "flowstone.parallel_coordinators": ParallelCoordinator,
    "flowstone.item_readers": ItemReader,
    "flowstone.observers": Observer,
    "flowstone.cli": None,
}


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered plugin, as ``flowstone plugins`` lists it.

    Attributes:
        name: the name it is looked up by.
        value: the ``module:attr`` it points to.
        distribution: the distribution that registers it, or :data:`BUILTIN_DISTRIBUTION`.
        version: that distribution's version (None for built-ins).
    """

    name: str
    value: str
    distribution: str
    version: str | None = None

    def source(self) -> str:
        """``value`` and where it comes from, for messages."""
        dist = f"{self.distribution} {self.version}" if self.version else self.distribution
        return f"{self.value} from {dist}"


def _short(name: object) -> str:
    # Names may come from environment variables; keep messages bounded.
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise UsageError(f"unknown plugin group {_short(group)}. Groups: {', '.join(GROUPS)}.")


def _members(protocol: type) -> tuple[list[str], list[str]]:
    """The (methods, attributes) a runtime-checkable protocol requires."""
    methods: list[str] = []
    attributes: list[str] = []
    for base in protocol.__mro__:
        if base is object or base.__name__ in ("Protocol", "Generic"):
            continue
        for name, member in vars(base).items():
            if not name.startswith("_") and callable(member) and name not in methods:
                methods.append(name)
        for name in getattr(base, "__annotations__", {}):
            if not name.startswith("_") and name not in attributes:
                attributes.append(name)
    return methods, attributes


class PluginRegistry:
    """Lazily resolves plugins by (group, name). Build one per pipeline or process.

    Entry points of a group are read once per registry, on first use of that group; a
    plugin is imported once, on first :meth:`load` of its name. Names that are not found
    are not remembered, so untrusted names cannot grow the registry. Thread-safe.
    """

    __slots__ = ("_groups", "_loaded", "_lock")

    def __init__(self) -> None:
        self._groups: dict[str, dict[str, list[tuple[PluginInfo, metadata.EntryPoint]]]] = {}
        self._loaded: dict[tuple[str, str], Callable[..., Any]] = {}
        self._lock = threading.RLock()

    # --- discovery -------------------------------------------------------------------

    def _entries(self, group: str) -> dict[str, list[tuple[PluginInfo, metadata.EntryPoint]]]:
        _check_group(group)
        with self._lock:
            cached = self._groups.get(group)
            if cached is not None:
                return cached
            entries: dict[str, list[tuple[PluginInfo, metadata.EntryPoint]]] = {}
            for builtin_group, name, value in _BUILTINS:
                if builtin_group == group:
                    point = metadata.EntryPoint(name=name, value=value, group=group)
                    entries[name] = [(PluginInfo(name, value, BUILTIN_DISTRIBUTION), point)]
            for point in metadata.entry_points(group=group):
                dist = point.dist
                info = PluginInfo(
                    point.name,
                    point.value,
                    dist.name if dist is not None else "unknown distribution",
                    dist.version if dist is not None else None,
                )
                sources = entries.setdefault(point.name, [])
                # The same target seen twice (a path listed twice) is one plugin, not a clash.
                if all(known.value != info.value for known, _ in sources):
                    sources.append((info, point))
            self._groups[group] = entries
            return entries

    def names(self, group: str) -> list[str]:
        """Sorted names registered in ``group`` (built-in and installed)."""
        return sorted(self._entries(group))

    def describe(self) -> dict[str, list[PluginInfo]]:
        """Every registered plugin of every group, by group then name; imports nothing.

        A name with two sources is listed twice; :meth:`load` refuses it.
        """
        return {
            group: [info for name in self.names(group) for info, _ in self._entries(group)[name]]
            for group in GROUPS
        }

    # --- loading ---------------------------------------------------------------------

    def _not_found(self, group: str, name: str) -> PluginNotFoundError:
        names = self.names(group)
        installed = ", ".join(names) or "none"
        provider = known_provider(group, name)
        known = {n for g, n, _ in _KNOWN_PLUGINS if g in (group, "*")}
        candidates = sorted({*names, *known})
        close = difflib.get_close_matches(name, candidates, n=1) if isinstance(name, str) else []
        if provider:
            fix = f"pip install {provider}"
        elif close and close[0] in names:
            fix = f"did you mean {close[0]!r}?"
        elif close:
            fix = f"did you mean {close[0]!r}? (pip install {known_provider(group, close[0])})"
        else:
            fix = "install the package that provides it"
        return PluginNotFoundError(
            f"{group} plugin {_short(name)} not found. It is either misspelled or not "
            f"installed. Installed: {installed}. Fix: {fix}"
        )

    def load(self, group: str, name: str) -> Callable[..., Any]:
        """Import and return the callable registered as ``name`` in ``group``.

        Raises:
            UsageError: ``group`` is not one of :data:`GROUPS`.
            PluginNotFoundError: nothing is registered under ``name``.
            PluginLoadError: the plugin fails to import, is not callable, or two
                distributions (or a distribution and a built-in) register ``name``.
        """
        entries = self._entries(group)
        with self._lock:
            loaded = self._loaded.get((group, name))
            if loaded is not None:
                return loaded
            sources = entries.get(name) if isinstance(name, str) else None
            if not sources:
                raise self._not_found(group, name)
            if len(sources) > 1:
                listed = " and ".join(info.source() for info, _ in sources)
                raise PluginLoadError(
                    f"{group} plugin {name!r} is registered more than once: {listed}. "
                    "Fix: uninstall one of these distributions."
                )
            info, point = sources[0]
            _check_core_version(group, name, info, point)
            try:
                obj = point.load()
            except Exception as exc:
                raise PluginLoadError(
                    f"{group} plugin {name!r} ({info.source()}) failed to import: "
                    f"{type(exc).__name__}: {exc}. Fix: reinstall that distribution, or "
                    "uninstall it if it is not needed."
                ) from exc
            if not callable(obj):
                raise PluginLoadError(
                    f"{group} plugin {name!r} ({info.source()}) is {type(obj).__name__}, not "
                    "a callable. Fix: point the entry point at a class or factory function."
                )
            factory: Callable[..., Any] = obj
            self._loaded[(group, name)] = factory
            return factory

    @overload
    def create(
        self, group: Literal["flowstone.io_managers"], name: str, /, *args: Any, **kwargs: Any
    ) -> IOManager: ...
    @overload
    def create(
        self, group: Literal["flowstone.run_stores"], name: str, /, *args: Any, **kwargs: Any
    ) -> RunStore: ...
    @overload
    def create(
        self, group: Literal["flowstone.executors"], name: str, /, *args: Any, **kwargs: Any
    ) -> Executor: ...
    @overload
    def create(
        self,
        group: Literal["flowstone.scatter_coordinators"],
        name: str,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> ScatterCoordinator: ...
    @overload
    def create(
        self,
        group: Literal["flowstone.parallel_coordinators"],
        name: str,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> ParallelCoordinator: ...
    @overload
    def create(
        self, group: Literal["flowstone.item_readers"], name: str, /, *args: Any, **kwargs: Any
    ) -> ItemReader: ...
    @overload
    def create(
        self, group: Literal["flowstone.observers"], name: str, /, *args: Any, **kwargs: Any
    ) -> Observer: ...
    @overload
    def create(self, group: str, name: str, /, *args: Any, **kwargs: Any) -> Any: ...
    def create(self, group: str, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Load the plugin, call it with the arguments, and check what it returned.

        Example: ``registry.create("flowstone.io_managers", "filesystem", root="data")``.

        Raises:
            PluginLoadError: as :meth:`load`; also when the call fails with a non-FlowStone
                error, or returns an object that lacks the group's protocol members.
        """
        factory = self.load(group, name)
        info = self._entries(group)[name][0][0]
        try:
            obj = factory(*args, **kwargs)
        except FlowStoneError:
            raise
        except Exception as exc:
            raise PluginLoadError(
                f"{group} plugin {name!r} ({info.source()}) failed to build: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return self.check(group, obj, plugin=f"{group} plugin {name!r} ({info.source()})")

    def check(self, group: str, obj: object, *, plugin: str | None = None) -> Any:
        """Return ``obj`` if it has every member of ``group``'s protocol, else raise.

        Raises:
            PluginLoadError: naming the missing methods and attributes.
        """
        _check_group(group)
        shape = _SHAPES[group]
        if shape is None:
            return obj
        methods, attributes = _members(shape)
        missing_methods = [m for m in methods if not callable(getattr(obj, m, None))]
        missing_attributes = [a for a in attributes if not hasattr(obj, a)]
        if not missing_methods and not missing_attributes:
            return obj
        missing = []
        if missing_methods:
            missing.append("missing methods " + ", ".join(missing_methods))
        if missing_attributes:
            missing.append("missing attributes " + ", ".join(missing_attributes))
        article = "an" if shape.__name__[0] in "AEIOU" else "a"
        raise PluginLoadError(
            f"{plugin or group + ' plugin'} returned {_short(obj)} which is not "
            f"{article} {shape.__name__}: {'; '.join(missing)}. Fix: implement "
            f"flowstone.protocols.{shape.__name__}."
        )


# --- run stores by URL ---------------------------------------------------------------

_URL_FORMS: Final = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "postgresql://user@host:5432/db (also postgresql+asyncpg://, postgres://)"
)
_PASSWORD: Final = re.compile(r"(://[^/@:]*:)[^/@]*@")


def _redact(url: str) -> str:
    return _PASSWORD.sub(r"\1***@", url)


def store_from_url(url: str, registry: PluginRegistry | None = None) -> RunStore:
    """Build the run store a database URL names (e.g. ``FLOWSTONE_DATABASE_URL``).

    ``memory://`` and ``sqlite:///path`` are built in; ``postgresql://``,
    ``postgresql+<driver>://`` and ``postgres://`` need ``flowstone-io-postgres``. The URL
    is passed unchanged to the ``flowstone.run_stores`` plugin; error messages never
    show its password.

    Raises:
        UsageError: the URL has no scheme, or one no run store accepts.
        PluginNotFoundError: the scheme's plugin is not installed.
    """
    scheme, sep, _ = url.partition("://") if isinstance(url, str) else ("", "", "")
    scheme = scheme.lower()
    driver_base = scheme.split("+", 1)[0]
    if sep and scheme in ("memory", "sqlite"):
        plugin = scheme
    elif sep and (scheme == "postgres" or driver_base == "postgresql"):
        plugin = "postgres"
    else:
        shown = _short(_redact(url)) if isinstance(url, str) else _short(url)
        raise UsageError(
            f"unsupported run store URL {shown}. Accepted forms: {_URL_FORMS}. "
            "Fix: set FLOWSTONE_DATABASE_URL (or store=) to one of these."
        )
    return (registry or PluginRegistry()).create("flowstone.run_stores", plugin, url)


def _memory_run_store(url: str) -> object:
    """Built-in ``memory://`` store: state lives in this process only."""
    # Imported here, not at the top: only a run that asks for this store pays for it.
    module = importlib.import_module("flowstone.defaults.memory_store")
    return module.MemoryRunStore()


def _sqlite_run_store(url: str) -> object:
    """Built-in ``sqlite:///path`` store on the standard library's ``sqlite3``."""
    module = importlib.import_module("flowstone.defaults.sqlite_store")
    return module.SQLiteRunStore.from_url(url)
