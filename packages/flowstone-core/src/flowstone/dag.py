"""The asset graph: definition-time validation, topological order and rendering."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from flowstone.asset import AssetDef
from flowstone.errors import CycleError, DefinitionError, DependencyError, ResourceError

__all__ = ["AssetGraph", "edge_label"]


class AssetGraph:
    """An immutable, validated DAG of assets.

    Raises at construction (never later) when a dependency is unknown, a name is used
    twice, the graph has a cycle (the error names the path), a route or parallel branch
    names a missing asset, or an asset requires a resource the pipeline does not declare.
    """

    __slots__ = ("_assets", "_order")

    def __init__(self, assets: Iterable[AssetDef], *, resources: Iterable[str] = ()) -> None:
        by_name: dict[str, AssetDef] = {}
        for a in assets:
            if not isinstance(a, AssetDef):
                raise DefinitionError(
                    f"pipeline assets must be @asset-decorated functions, got {a!r}; "
                    "decorate it with @flowstone.asset"
                )
            if a.name in by_name:
                raise DependencyError(
                    f"two assets are named {a.name!r}; asset names must be unique in a pipeline "
                    "(pass name=... to @asset to rename one)"
                )
            by_name[a.name] = a
        self._assets: dict[str, AssetDef] = by_name
        self._check_references(set(resources))
        self._order: tuple[str, ...] = self._toposort()

    # --- validation ----------------------------------------------------------------
    def _check_references(self, resources: set[str]) -> None:
        names = self._assets
        for a in names.values():
            for d in a.deps:
                if d not in names:
                    hint = _closest(d, names)
                    raise DependencyError(
                        f"asset {a.name!r} depends on {d!r} (parameter or deps=), but the pipeline "
                        f"has no asset named {d!r}.{hint} Add the asset to the pipeline or rename "
                        "the parameter."
                    )
            missing = [r for r in a.requires if r not in resources]
            if missing:
                raise ResourceError(
                    f"asset {a.name!r} requires resources {missing} that the pipeline does not "
                    f"declare; declared: {sorted(resources) or 'none'}. Pass "
                    f"resources={{{missing[0]!r}: ...}} to Pipeline(...)."
                )
            if a.routed_from is not None:
                r = names.get(a.routed_from)
                if r is None or not r.is_router:
                    raise DefinitionError(
                        f"asset {a.name!r} has routed_from={a.routed_from!r}, but that is "
                        f"{'not an asset' if r is None else 'not a @router'} of the pipeline"
                    )
                if a.name not in (r.router_branches or ()):
                    raise DefinitionError(
                        f"asset {a.name!r} is routed_from {r.name!r}, but router {r.name!r} has "
                        f"branches {list(r.router_branches or ())}; add {a.name!r} to them"
                    )
            if a.is_router:
                for b in a.router_branches or ():
                    target = names.get(b)
                    if target is None:
                        raise DefinitionError(
                            f"router {a.name!r} names branch {b!r}, but the pipeline has no asset "
                            f"{b!r}; define @asset(routed_from={a.name!r}) def {b}(...)"
                        )
                    if target.routed_from != a.name:
                        raise DefinitionError(
                            f"router {a.name!r} names branch {b!r}, but asset {b!r} does not "
                            f"declare routed_from={a.name!r}"
                        )
            if a.parallel is not None:
                for branch, final in a.parallel.branches.items():
                    if final not in names:
                        raise DefinitionError(
                            f"parallel asset {a.name!r}: branch {branch!r} ends in {final!r}, "
                            "which is not an asset of the pipeline"
                        )
                    if final == a.name:
                        raise DefinitionError(
                            f"parallel asset {a.name!r}: branch {branch!r} cannot end in itself"
                        )

    def _toposort(self) -> tuple[str, ...]:
        """Depth-first order; a cycle is reported with its full path, not as an exception
        raised for control flow deep in the recursion (seed: the Elixir DAG lost it)."""
        state: dict[str, int] = {}  # 1 visiting, 2 done
        order: list[str] = []
        for root in self._assets:
            if state.get(root) == 2:
                continue
            stack: list[tuple[str, int]] = [(root, 0)]
            path: list[str] = []
            while stack:
                node, i = stack.pop()
                if i == 0:
                    state[node] = 1
                    path.append(node)
                ups = self._assets[node].upstream
                if i < len(ups):
                    stack.append((node, i + 1))
                    nxt = ups[i]
                    s = state.get(nxt)
                    if s == 1:
                        cycle = [*path[path.index(nxt) :], nxt]
                        raise CycleError(list(reversed(cycle)))
                    if s is None:
                        stack.append((nxt, 0))
                else:
                    state[node] = 2
                    path.pop()
                    order.append(node)
        return tuple(order)

    # --- queries ---------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._assets

    def __getitem__(self, name: str) -> AssetDef:
        try:
            return self._assets[name]
        except KeyError:
            raise DependencyError(
                f"no asset named {name!r}; assets are: {', '.join(self._order)}"
                f".{_closest(name, self._assets)}"
            ) from None

    @property
    def assets(self) -> Mapping[str, AssetDef]:
        return self._assets

    @property
    def order(self) -> tuple[str, ...]:
        """Topological order: every asset after all it depends on."""
        return self._order

    def upstream_closure(self, targets: Sequence[str]) -> list[str]:
        """``targets`` and everything they transitively depend on, in topological order."""
        needed: set[str] = set()
        todo = [self[t].name for t in targets]
        while todo:
            n = todo.pop()
            if n in needed:
                continue
            needed.add(n)
            todo.extend(self._assets[n].upstream)
        return [n for n in self._order if n in needed]

    # --- rendering -------------------------------------------------------------------
    def render(self, fmt: Literal["ascii", "mermaid", "dot"] = "ascii") -> str:
        edges = [(d, a.name, edge_label(a, d)) for a in self._ordered() for d in a.upstream]
        if fmt == "mermaid":
            lines = ["graph TD"]
            lines += [f"    {n}[{n}]" for n in self._order]
            lines += [
                f"    {src} -->{'|' + lbl + '|' if lbl else ''} {dst}" for src, dst, lbl in edges
            ]
            return "\n".join(lines)
        if fmt == "dot":
            lines = ["digraph flowstone {", "    rankdir=LR;"]
            lines += [f'    "{n}";' for n in self._order]
            lines += [
                f'    "{src}" -> "{dst}"' + (f' [label="{lbl}"]' if lbl else "") + ";"
                for src, dst, lbl in edges
            ]
            lines.append("}")
            return "\n".join(lines)
        if fmt == "ascii":
            width = max((len(n) for n in self._order), default=0)
            out = []
            for a in self._ordered():
                kind = _kind(a)
                ups = ", ".join(
                    d + (f" ({lbl})" if lbl else "")
                    for d in a.upstream
                    for lbl in [edge_label(a, d)]
                )
                out.append(
                    f"{a.name:<{width}}  {kind:<8} <- {ups}"
                    if ups
                    else f"{a.name:<{width}}  {kind}"
                )
            return "\n".join(out)
        raise DefinitionError(f"unknown graph format {fmt!r}; use 'ascii', 'mermaid' or 'dot'")

    def _ordered(self) -> list[AssetDef]:
        return [self._assets[n] for n in self._order]


def _kind(a: AssetDef) -> str:
    if a.is_router:
        return "router"
    if a.scatter is not None:
        return "scatter"
    if a.parallel is not None:
        return "parallel"
    return "asset"


def edge_label(a: AssetDef, dep: str) -> str:
    """What the edge ``dep -> a`` is, for drawing: ``route``, ``branch NAME``, ``optional``
    or ``""`` (a plain dependency)."""
    if a.routed_from == dep:
        return "route"
    if a.parallel is not None:
        branch = a.parallel.branch_of(dep)
        if branch is not None:
            return f"branch {branch}"
    if dep in a.optional_deps:
        return "optional"
    return ""


def _closest(name: str, names: Iterable[str]) -> str:
    import difflib

    match = difflib.get_close_matches(name, list(names), n=1)
    return f" Did you mean {match[0]!r}?" if match else ""
