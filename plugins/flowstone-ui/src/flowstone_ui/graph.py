"""The asset graph laid out in layers, for drawing as SVG.

Each asset sits in the layer one past its deepest dependency (sources in layer 0); within a
layer, assets are ordered by the mean position of their dependencies (one barycentre pass),
which keeps most edges short and uncrossed for the graphs pipelines have. The layout is
pure data (:class:`GraphLayout`); the template draws it and the JSON API returns it.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowstone.asset import AssetDef
from flowstone.dag import AssetGraph, edge_label

__all__ = ["GraphEdge", "GraphLayout", "GraphNode", "asset_kind", "layout"]

NODE_W = 170
NODE_H = 40
GAP_X = 70
GAP_Y = 22
PAD = 16


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One asset: where it is drawn, what kind it is, and its latest state (if any)."""

    name: str
    kind: str
    layer: int
    x: int
    y: int
    partitioned: bool
    state: str | None = None


@dataclass(frozen=True, slots=True)
class GraphEdge:
    """A dependency ``source -> target``; ``label`` says ``route``, ``branch X`` or
    ``optional`` where it is not a plain dependency."""

    source: str
    target: str
    label: str
    path: str


@dataclass(frozen=True, slots=True)
class GraphLayout:
    """The drawn graph: its size, nodes and edges (SVG path data)."""

    width: int
    height: int
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]


def asset_kind(a: AssetDef) -> str:
    """``router``, ``branch`` (chosen by a router), ``scatter``, ``parallel`` or ``asset``."""
    if a.is_router:
        return "router"
    if a.scatter is not None:
        return "scatter"
    if a.parallel is not None:
        return "parallel"
    if a.routed_from is not None:
        return "branch"
    return "asset"


def layout(graph: AssetGraph, states: dict[str, str] | None = None) -> GraphLayout:
    """Lay ``graph`` out left to right; ``states`` colours each asset by name."""
    states = states or {}
    layer: dict[str, int] = {}
    for name in graph.order:  # topological: every dependency is placed first
        ups = graph.assets[name].upstream
        layer[name] = 1 + max((layer[u] for u in ups), default=-1)
    layers: dict[int, list[str]] = {}
    for name in graph.order:
        layers.setdefault(layer[name], []).append(name)
    position: dict[str, int] = {}
    for depth in sorted(layers):
        members = layers[depth]
        first = {n: i for i, n in enumerate(members)}
        members.sort(key=lambda n: _weight(graph, n, position, first[n]))
        for i, n in enumerate(members):
            position[n] = i
    tallest = max((len(v) for v in layers.values()), default=0)
    nodes: dict[str, GraphNode] = {}
    for name in graph.order:
        a = graph.assets[name]
        depth = layer[name]
        offset = (tallest - len(layers[depth])) * (NODE_H + GAP_Y) // 2
        nodes[name] = GraphNode(
            name=name,
            kind=asset_kind(a),
            layer=depth,
            x=PAD + depth * (NODE_W + GAP_X),
            y=PAD + offset + position[name] * (NODE_H + GAP_Y),
            partitioned=a.partitions is not None,
            state=states.get(name),
        )
    edges = []
    for name in graph.order:
        a = graph.assets[name]
        for dep in a.upstream:
            s, t = nodes[dep], nodes[name]
            x1, y1 = s.x + NODE_W, s.y + NODE_H // 2
            x2, y2 = t.x, t.y + NODE_H // 2
            mid = (x1 + x2) // 2
            edges.append(GraphEdge(dep, name, edge_label(a, dep),
                                   f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"))
    width = PAD * 2 + (max(layers, default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max(tallest, 1) * (NODE_H + GAP_Y) - GAP_Y
    return GraphLayout(width, height, tuple(nodes.values()), tuple(edges))


def _weight(graph: AssetGraph, name: str, position: dict[str, int], fallback: int) -> float:
    """The mean position of ``name``'s dependencies (its own order when it has none)."""
    ups = [position[u] for u in graph.assets[name].upstream if u in position]
    return sum(ups) / len(ups) if ups else float(fallback)
