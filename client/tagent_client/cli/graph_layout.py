"""Places a DAG's boxes in layers and routes its edges, with grandalf's Sugiyama layout (pure Python).

`place` takes each node's box size and the edges, and returns each box's position and each edge's
polyline, in one coordinate space whose top-left corner is (0, 0). Guarantees: every dependency
points down (a node stands in a lower layer than each node it depends on, cycles aside); boxes in
one layer are at least XSPACE apart and layers YSPACE apart, so no two boxes overlap; an edge that
spans several layers bends through reserved slots in the layers between (grandalf's dummy
vertices), never through a box; each polyline starts on its source box's border and ends on its
target box's (a node's edge to itself loops out of its right side and back). Unconnected parts
of the graph are laid out side by side, in the order given.

grandalf is imported when `place` is first called, so commands that draw nothing never load it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["XSPACE", "YSPACE", "Box", "Layout", "place"]

XSPACE = 36.0  # between two boxes (or edge slots) of one layer
YSPACE = 64.0  # between two layers: room for the arrows and their labels
COMPONENT_GAP = 56.0  # between two unconnected parts of the graph
EDGE_SLOT = 28.0  # width reserved in a layer for an edge that passes through it

Point = tuple[float, float]


@dataclass(frozen=True)
class Box:
    """A node's rectangle: its top-left corner, width and height."""

    x: float
    y: float
    w: float
    h: float

    def overlaps(self, other: Box) -> bool:
        """True when the two rectangles share any interior point."""
        return (self.x < other.x + other.w and other.x < self.x + self.w
                and self.y < other.y + other.h and other.y < self.y + self.h)


@dataclass(frozen=True)
class Layout:
    """Every node's box, every edge's polyline (keyed by (source, target)), and the drawing's size."""

    boxes: dict[str, Box]
    edges: dict[tuple[str, str], list[Point]]
    width: float
    height: float


class _View:
    """What grandalf reads and writes on a vertex (w, h, xy) or an edge (setpath)."""

    def __init__(self, w: float = 0.0, h: float = 0.0) -> None:
        self.w, self.h = w, h
        self.xy: Point = (0.0, 0.0)
        self.points: list[Point] = []

    def setpath(self, points: list[Point]) -> None:
        self.points = [(float(x), float(y)) for x, y in points]


def place(sizes: Mapping[str, tuple[float, float]], edges: Sequence[tuple[str, str]]) -> Layout:
    """Lay out the nodes (name -> (width, height)) and the edges (source, target) between them.

    An edge whose end is not in `sizes` is an error (KeyError); a repeated edge is drawn once.
    """
    from grandalf.graphs import Edge, Graph, Vertex  # a pure-Python layered layout; loaded only to draw
    from grandalf.layouts import SugiyamaLayout
    from grandalf.routing import route_with_lines

    vertices = {}
    for name, (w, h) in sizes.items():
        vertices[name] = Vertex(name)
        vertices[name].view = _View(w, h)
    links = []
    loops = {source for source, target in edges if source == target}  # grandalf drops them: drawn beside the box
    for source, target in dict.fromkeys(e for e in edges if e[0] != e[1]):
        link = Edge(vertices[source], vertices[target])
        link.view = _View()
        links.append(link)
    graph = Graph(list(vertices.values()), links)
    order = {name: i for i, name in enumerate(sizes)}
    parts = sorted(graph.C, key=lambda part: min(order[v.data] for v in part.sV))

    boxes: dict[str, Box] = {}
    routes: dict[tuple[str, str], list[Point]] = {}
    left, height = 0.0, 0.0
    for part in parts:
        sugiyama = SugiyamaLayout(part)
        sugiyama.xspace, sugiyama.yspace = XSPACE, YSPACE
        sugiyama.dw, sugiyama.dh = EDGE_SLOT, EDGE_SLOT
        sugiyama.route_edge = route_with_lines
        sugiyama.init_all()
        sugiyama.draw()
        sugiyama.draw_edges()
        part_boxes = {v.data: _box(v.view) for v in part.sV}
        part_routes = {(e.v[0].data, e.v[1].data): e.view.points for e in part.sE}
        part_routes.update({(name, name): _loop(part_boxes[name]) for name in part_boxes if name in loops})
        min_x = min([b.x for b in part_boxes.values()] + [x for r in part_routes.values() for x, _ in r])
        min_y = min([b.y for b in part_boxes.values()] + [y for r in part_routes.values() for _, y in r])
        dx, dy = left - min_x, -min_y
        for name, b in part_boxes.items():
            boxes[name] = Box(b.x + dx, b.y + dy, b.w, b.h)
        for key, route in part_routes.items():
            routes[key] = [(x + dx, y + dy) for x, y in route]
        right = max([b.x + b.w for b in boxes.values()] + [x for r in routes.values() for x, _ in r])
        height = max([height] + [b.y + b.h for b in boxes.values()] + [y for r in routes.values() for _, y in r])
        left = right + COMPONENT_GAP
    width = max(left - COMPONENT_GAP, 0.0)
    return Layout(boxes=boxes, edges=routes, width=width, height=height)


def _loop(box: Box) -> list[Point]:
    """A step that depends on itself: out of its right side and back in."""
    right, middle = box.x + box.w, box.y + box.h / 2
    return [(right, middle - 8), (right + 20, middle - 8), (right + 20, middle + 8), (right, middle + 8)]


def _box(view: _View) -> Box:
    x, y = view.xy
    return Box(x - view.w / 2, y - view.h / 2, view.w, view.h)
