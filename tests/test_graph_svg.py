"""`tagent graph --format svg`: the DAG drawn as SVG, laid out by grandalf (issue 15, point 2).

The drawing is pure (tagent_client/cli/graph_svg.py over graph_layout.py): its tests render
test_graph.py's plan (every mode, every dependency type, a fan-out, each kind of condition, a
sub-pipeline step and a step added at run time) and read the SVG back with xml.etree, checking the
contract the dashboard relies on (a `g.step` per step with data-step/data-state and an escaped id, a
`g.edge` per dependency, colours in the `<style>` keyed on data-state), that no two boxes overlap
and each is wide enough for its name, and that hostile names come out escaped. The end-to-end test
draws a finished run from a real daemon.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import DaemonProcess, write_pipeline
from test_graph import EDGES, GRAPHED, PLAN, STATUSES

from tagent_client.cli.graph_layout import Box, place
from tagent_client.cli.graph_svg import NAME_SIZE, STATE_COLORS, TEXT_COLOR, render_svg, step_dom_id, text_width
from tagent_client.define.plan import DependencyType, Plan, StepKind, StepSpec

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    """The document's root, after checking it is an <svg> in the SVG namespace with a viewBox."""
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg" and re.fullmatch(r"0 0 [\d.]+ [\d.]+", root.get("viewBox", ""))
    return root


def steps(root: ET.Element) -> dict[str, ET.Element]:
    return {g.get("data-step"): g for g in root.iter(f"{NS}g") if g.get("class") == "step"}


def edges(root: ET.Element) -> list[tuple[str, str, str]]:
    return [(g.get("data-from"), g.get("data-to"), g.get("data-type")) for g in root.iter(f"{NS}g")
            if g.get("class") == "edge"]


def bounds(group: ET.Element) -> Box:
    """The rectangle around a step's outline(s): its rects and polygons."""
    xs: list[float] = []
    ys: list[float] = []
    for shape in group:
        if shape.tag == f"{NS}rect":
            x, y, w, h = (float(shape.get(a)) for a in ("x", "y", "width", "height"))
            xs += [x, x + w]
            ys += [y, y + h]
        elif shape.tag == f"{NS}polygon":
            for point in shape.get("points").split():
                px, py = point.split(",")
                xs.append(float(px))
                ys.append(float(py))
    return Box(min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))


def luminance(color: str) -> float:
    channels = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_svg_has_a_node_per_step_and_an_edge_per_dependency() -> None:
    # Given the plan with every mode and dependency type, and a state per step; When drawn as SVG
    root = parse(render_svg(PLAN, STATUSES))
    found = steps(root)
    # Then each step is a g.step with its state, kind, mode and escaped id, and shows its state word
    assert sorted(found) == sorted(spec.name for spec in PLAN.steps)
    for spec in PLAN.steps:
        node = found[spec.name]
        assert node.get("id") == step_dom_id(spec.name) and node.get("data-state") == STATUSES[spec.name]
        assert node.get("data-kind") == spec.kind.value and node.get("data-mode") == spec.mode.value
        texts = {t.get("class"): t.text for t in node.iter(f"{NS}text")}
        assert texts["name"] == spec.name and texts["state"] == STATUSES[spec.name]
    assert found["late"].get("data-added-by") == "fetch" and found["fetch"].get("data-added-by") is None
    # And every dependency is one g.edge with its type, holding an arrow
    assert sorted(edges(root)) == sorted(EDGES)
    lines = [g.find(f"{NS}path") for g in root.iter(f"{NS}g") if g.get("class") == "edge"]
    assert all(line.get("class") == "line" and line.get("marker-end") == "url(#tagent-arrow)" for line in lines)
    # And it carries the same notes as the other formats: fan-outs, conditions, child pipeline, added step
    words = " ".join(t.text or "" for t in root.iter(f"{NS}text"))
    for note in ("fan-out over fetch.companies", "when research.score > 3", "when callable", "when judged by model",
                 "child pipeline child_pipe", "added by fetch", "PARALLEL_MERGE", "CONDITIONAL"):
        assert note in words, note
    # And a fan-out step is drawn as a stack (two outlines), a tagent step as a hexagon
    assert len([s for s in found["sub"] if "shape" in (s.get("class") or "")]) == 2
    assert found["check"].find(f"{NS}polygon") is not None


def test_states_are_coloured_by_css_on_data_state_and_pass_contrast() -> None:
    # Given a run's drawing; When its style block is read
    root = parse(render_svg(PLAN, STATUSES))
    style = root.find(f"{NS}style").text
    # Then each state's fill is a rule keyed on data-state (so a page recolours a node by setting it)
    for state, (fill, outline, text) in STATE_COLORS.items():
        assert f'[data-state="{state}"] .shape {{ fill: {fill}; stroke: {outline};' in style
        # And the step text and the state word read dark on the light fill (WCAG AA, 4.5:1)
        assert contrast(TEXT_COLOR, fill) >= 7 and contrast(text, fill) >= 4.5, state
    assert "fill=" not in "".join(ET.tostring(g, encoding="unicode") for g in steps(root).values())
    # And the legend shows every state; a file's drawing (no run) has neither states nor their legend
    assert {g.get("data-state") for g in root.iter(f"{NS}g") if g.get("class") is None} >= set(STATE_COLORS)
    plain = parse(render_svg(PLAN))
    assert not any(g.get("data-state") for g in plain.iter(f"{NS}g"))


def test_boxes_do_not_overlap_and_fit_their_names() -> None:
    # Given the plan plus a long-named step and an unconnected one; When drawn
    plan = Plan(name="p", steps=[*PLAN.steps,
                                 StepSpec(name="a_rather_long_step_name_that_must_not_be_clipped_WWWW",
                                          kind=StepKind.AGENT, deps={"fetch": DependencyType.HARD}),
                                 StepSpec(name="alone", kind=StepKind.FUNCTION)])
    root = parse(render_svg(plan, STATUSES))
    boxes = {name: bounds(g) for name, g in steps(root).items()}
    # Then no two step outlines overlap, and each is wider than its name drawn in bold
    names = sorted(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not boxes[a].overlaps(boxes[b]), (a, b)
        assert boxes[a].w > text_width(a, NAME_SIZE, bold=True)
    # And the drawing's viewBox holds every box (inside the translated DAG group)
    _, _, width, height = (float(v) for v in root.get("viewBox").split())
    assert all(b.x >= 0 and b.y >= 0 and b.x + b.w < width and b.y + b.h < height for b in boxes.values())


def test_edges_run_from_the_source_box_down_to_the_target_box() -> None:
    # Given a layout of a small DAG with a dependency that skips a layer, and a lone node
    layout = place({"a": (120, 40), "b": (60, 40), "c": (200, 60), "lone": (50, 30), "self": (40, 30)},
                   [("a", "b"), ("b", "c"), ("a", "c"), ("self", "self")])
    # Then an edge of a node to itself loops out of its right side and back
    me = layout.boxes["self"]
    assert all(x >= me.x + me.w and me.y <= y <= me.y + me.h for x, y in layout.edges.pop(("self", "self")))
    # And each other edge starts on its source's border and ends on its target's, below it
    for (source, target), points in layout.edges.items():
        src, dst = layout.boxes[source], layout.boxes[target]
        (x0, y0), (x1, y1) = points[0], points[-1]
        assert src.x - 0.5 <= x0 <= src.x + src.w + 0.5 and abs(y0 - (src.y + src.h)) < 0.5, (source, target)
        assert dst.x - 0.5 <= x1 <= dst.x + dst.w + 0.5 and abs(y1 - dst.y) < 0.5, (source, target)
    # And the edge that skips a layer bends beside b, not through it
    assert len(layout.edges[("a", "c")]) == 3
    bend = layout.edges[("a", "c")][1]
    b = layout.boxes["b"]
    assert not (b.x <= bend[0] <= b.x + b.w)
    # And the lone node stands apart, inside the drawing
    lone = layout.boxes["lone"]
    assert all(not lone.overlaps(box) for name, box in layout.boxes.items() if name != "lone")
    assert lone.x + lone.w <= layout.width


def test_names_with_markup_are_escaped() -> None:
    # Given steps whose names hold <, &, quotes and a control character, one depending on another
    evil, other = 'a<b&c"d\'e', "x y\x01z"
    plan = Plan(name='p<&">', steps=[StepSpec(name=evil, kind=StepKind.FUNCTION),
                                     StepSpec(name=other, kind=StepKind.AGENT, deps={evil: DependencyType.SOFT})])
    # When drawn; Then it parses, the names read back intact and the ids are plain and distinct
    svg = render_svg(plan, {evil: "failed"}, title='run <x> & "y"')
    root = parse(svg)
    found = steps(root)
    assert set(found) == {evil, "x y\ufffdz"} and found[evil].get("data-state") == "failed"
    ids = [g.get("id") for g in found.values()]
    assert len(set(ids)) == 2 and all(re.fullmatch(r"step-[\w-]+", i) for i in ids)
    assert edges(root) == [(evil, "x y\ufffdz", "soft")]
    assert "<b&c" not in svg and "run <x>" not in svg
    assert step_dom_id("a-b") != step_dom_id("a_b") and step_dom_id("a-2d-b") != step_dom_id("a-b")


@pytest.mark.timeout(90)
def test_svg_of_a_finished_run_and_of_a_file(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a run that ended with a failed step, a skipped one and a step added at run time
    path = write_pipeline(tmp_path, "graphed.py", GRAPHED)
    with daemon.client() as client:
        run_id = client.submit(str(path)).id
        assert client.wait(run_id, timeout=30).status == "failed"
    # When its graph is drawn as SVG by the CLI
    out = daemon.cli("graph", run_id[:8], "--format", "svg")
    # Then each step shows the state it ended in, the added step its origin, the title the run
    assert out.returncode == 0, out.stderr
    root = parse(out.stdout)
    found = steps(root)
    states = {name: node.get("data-state") for name, node in found.items()}
    assert states == {"start": "completed", "gated": "skipped", "boom": "failed", "after": "completed",
                      "extra": "completed"}
    assert found["extra"].get("data-added-by") == "start"
    assert f"run {run_id}: failed" in "".join(t.text or "" for t in root.iter(f"{NS}text"))
    assert ("start", "extra", "hard") in edges(root) and ("boom", "after", "soft") in edges(root)
    # And the file's drawing has its steps and no states
    drawn = daemon.cli("graph", str(path), "-f", "svg")
    assert drawn.returncode == 0, drawn.stderr
    plain = parse(drawn.stdout)
    assert sorted(steps(plain)) == ["after", "boom", "gated", "start"]
    assert not any(g.get("data-state") for g in plain.iter(f"{NS}g"))
