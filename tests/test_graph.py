"""`tagent graph`: a pipeline's DAG as text, mermaid and dot (issue 15, point 2).

The renderer is pure (tagent_client/cli/graph.py): its tests build a Plan holding every execution
mode, every dependency type, a fan-out, each kind of condition, a sub-pipeline step and a step added
at run time, and check each format names every step and edge with the right labels and is well
formed. The end-to-end tests render a file, and a finished run (a failed and a skipped step) from a
real daemon.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import DaemonProcess, write_pipeline

from tagent_client import when
from tagent_client.cli.graph import condition_text, layers, to_dot, to_mermaid, to_text
from tagent_client.define.plan import DependencyType, ExecutionMode, Plan, StepKind, StepSpec

D = DependencyType
CHILD = Plan(name="child_pipe", steps=[StepSpec(name="inner", kind=StepKind.FUNCTION)])
PLAN = Plan(name="every_kind", steps=[
    StepSpec(name="fetch", kind=StepKind.FUNCTION),
    StepSpec(name="hints", kind=StepKind.FUNCTION, mode=ExecutionMode.CONCURRENT),
    StepSpec(name="research", kind=StepKind.AGENT, mode=ExecutionMode.CONCURRENT, over="fetch.companies",
             deps={"fetch": D.DATA, "hints": D.SOFT}),
    StepSpec(name="check", kind=StepKind.TAGENT, mode=ExecutionMode.CONDITIONAL, deps={"research": D.VALIDATION},
             condition=(when("research.score") > 3).to_data()),
    StepSpec(name="judge", kind=StepKind.AGENT, mode=ExecutionMode.CONDITIONAL, deps={"fetch": D.HARD},
             constraints=["only for public companies"]),
    StepSpec(name="gate", kind=StepKind.FUNCTION, mode=ExecutionMode.CONDITIONAL, deps={"fetch": D.HARD},
             condition_is_callable=True),
    StepSpec(name="sub", kind=StepKind.PIPELINE, mode=ExecutionMode.PARALLEL_MERGE, child=CHILD, has_merge=True,
             over="fetch.companies", deps={"check": D.HARD, "judge": D.SOFT, "gate": D.HARD}),
    StepSpec(name="late", kind=StepKind.FUNCTION, deps={"sub": D.HARD}, added_by="fetch"),
])
EDGES = [(dep, spec.name, kind.value) for spec in PLAN.steps for dep, kind in spec.deps.items()]
STATUSES = {"fetch": "completed", "hints": "completed", "research": "completed", "check": "failed",
            "judge": "skipped", "gate": "cancelled", "sub": "pending", "late": "running"}


def node_ids(text: str, pattern: str) -> dict[str, str]:
    """Step name -> node id, from each node's declaration (its label starts with the name)."""
    return {m.group(2): m.group(1) for m in re.finditer(pattern, text, re.M)}


def test_layers_put_each_step_below_its_deepest_dependency() -> None:
    # Given the plan; When it is layered; Then every dependency stands in an earlier layer
    found = layers(PLAN)
    depth = {spec.name: n for n, layer in enumerate(found) for spec in layer}
    assert sorted(depth) == sorted(s.name for s in PLAN.steps)
    assert all(depth[dep] < depth[name] for dep, name, _ in EDGES)
    assert [s.name for s in found[0]] == ["fetch", "hints"]


def test_condition_kinds_read_as_text_callable_or_judged() -> None:
    # Given a when(...) condition, a callable one and a judged one; Then each reads as such
    assert condition_text(PLAN.step("check")) == "research.score > 3"
    assert condition_text(PLAN.step("gate")) == "callable"
    assert condition_text(PLAN.step("judge")) == "judged by model"
    assert condition_text(PLAN.step("fetch")) is None


def test_text_lists_every_step_with_its_details_within_80_columns() -> None:
    # Given the plan and a status per step; When it is rendered as text
    text = to_text(PLAN, STATUSES)
    # Then every step shows its kind, mode and status, and lines fit 80 columns
    assert all(len(line) <= 80 for line in text.splitlines())
    for spec in PLAN.steps:
        head = next(line for line in text.splitlines() if line.startswith(f"  {spec.name}  "))
        assert f"[{spec.kind.value}, {spec.mode.value.upper()}]" in head and head.endswith(STATUSES[spec.name])
    # And every dependency with its type, the fan-outs, conditions, child pipeline and added step
    for spec in PLAN.steps:
        if spec.deps:
            assert "      needs " + ", ".join(f"{dep} ({kind.value})" for dep, kind in spec.deps.items()) in text
    for note in ("fan-out over fetch.companies", "when research.score > 3", "when callable", "when judged by model",
                 "child pipeline child_pipe", "added by fetch", "PARALLEL_MERGE"):
        assert note in text
    # And without statuses (a file), no status is shown; colour only when asked for
    assert "completed" not in to_text(PLAN)
    assert "\x1b[" not in text and "\x1b[" in to_text(PLAN, STATUSES, color=True)


def test_mermaid_declares_every_node_and_labels_every_edge() -> None:
    # Given the plan with statuses; When it is rendered as mermaid
    text = to_mermaid(PLAN, STATUSES)
    lines = text.splitlines()
    # Then it is a flowchart whose nodes are each declared once, shaped by kind
    assert lines[0] == "flowchart TD"
    ids = node_ids(text, r'^    (s\d+)(?:\["|\("|\{\{"|\[\[")([\w]+)')
    assert len(ids) == len(PLAN.steps) == len(set(ids.values()))
    assert f'{ids["sub"]}[["sub<br/>pipeline' in text and f'{ids["check"]}{{{{"check' in text
    assert f'{ids["research"]}("research' in text and f'{ids["fetch"]}["fetch' in text
    # And every edge joins declared nodes, labelled by its type
    for dep, name, kind in EDGES:
        assert re.search(rf"^    {ids[dep]} \S+\|{kind}\| {ids[name]}$", text, re.M), (dep, name)
    assert f"{ids['hints']} -.->|soft|" in text and f"{ids['research']} ==>|validation|" in text
    edges = re.findall(r"^    (s\d+) \S+\|\w+\| (s\d+)$", text, re.M)
    assert len(edges) == len(EDGES) and {n for e in edges for n in e} <= set(ids.values())
    # And each status is a classDef, each node in its class; brackets balance
    for name, status in STATUSES.items():
        assert f"classDef {status} " in text and f"    class {ids[name]} {status}" in lines
    for opening, closing in ("[]", "()", "{}"):
        assert text.count(opening) == text.count(closing)


def test_dot_declares_every_node_and_styles_every_edge() -> None:
    # Given the plan with statuses; When it is rendered as dot
    text = to_dot(PLAN, STATUSES)
    # Then it is one digraph with balanced braces, a node per step shaped by kind and filled by status
    assert text.startswith('digraph "every_kind" {') and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}") == 1 and text.count("[") == text.count("]")
    ids = node_ids(text, r'^    (s\d+) \[label="(\w+)')
    assert len(ids) == len(PLAN.steps)
    assert re.search(rf'^    {ids["sub"]} .*shape=box3d', text, re.M)
    assert re.search(rf'^    {ids["check"]} .*failed.*shape=hexagon.*fillcolor="#f8d7da"', text, re.M)
    # And every edge joins declared nodes, labelled and styled by its type
    styles = {"hard": "solid", "soft": "dashed", "validation": "bold", "data": "dotted"}
    for dep, name, kind in EDGES:
        assert f'    {ids[dep]} -> {ids[name]} [label="{kind}", style={styles[kind]}];' in text
    edges = re.findall(r"^    (s\d+) -> (s\d+) ", text, re.M)
    assert len(edges) == len(EDGES) and {n for e in edges for n in e} <= set(ids.values())
    assert "fan-out over fetch.companies" in text and "added by fetch" in text


def test_a_dependency_outside_the_plan_is_still_a_declared_node() -> None:
    # Given a step depending on a name the plan does not hold
    plan = Plan(name="p", steps=[StepSpec(name="a", kind=StepKind.FUNCTION, deps={"ghost": D.HARD})])
    # When rendered; Then the edge points at a declared node marked unknown
    assert 's1["ghost<br/>unknown step"]' in to_mermaid(plan) and "s1 -->|hard| s0" in to_mermaid(plan)
    assert 's1 [label="ghost\\nunknown step"' in to_dot(plan)


GRAPHED = """
from tagent_client import Pipeline, when


def extra(ctx):
    return 1


def start(ctx):
    ctx.add_step("extra", fn=extra, depends_on=["start"])
    return {"go": False}


def boom(ctx):
    raise ValueError("no luck")


pipeline = Pipeline("graphed")
pipeline.step("start", fn=start)
pipeline.step("gated", fn=extra, depends_on=["start"], condition=when("start.go") == True)  # noqa: E712
pipeline.step("boom", fn=boom, depends_on=["start"], max_retries=0)
pipeline.step("after", fn=extra, depends_on={"boom": "soft", "gated": "soft"})
"""


@pytest.mark.timeout(90)
def test_graph_of_a_finished_run_shows_each_steps_status(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a run that ended with a failed step, a skipped one and a step added at run time
    path = write_pipeline(tmp_path, "graphed.py", GRAPHED)
    with daemon.client() as client:
        run_id = client.submit(str(path)).id
        detail = client.wait(run_id, timeout=30)
    assert detail.status == "failed"
    # When its graph is shown as text (not a terminal: no colour) and as mermaid, by a run id prefix
    text = daemon.cli("graph", run_id[:8])
    mermaid = daemon.cli("graph", run_id, "--format", "mermaid")
    # Then the text has each step with its status and the added step's origin
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"run {run_id}: failed") and "\x1b[" not in text.stdout
    lines = text.stdout.splitlines()
    for name, status in (("start", "completed"), ("gated", "skipped"), ("boom", "failed"), ("extra", "completed")):
        assert any(line.startswith(f"  {name}  ") and line.endswith(status) for line in lines), text.stdout
    assert "added by start" in text.stdout and "when start.go == True" in text.stdout
    assert "boom (soft), gated (soft)" in text.stdout
    # And the mermaid puts the failed and the skipped step in their classes
    assert mermaid.returncode == 0, mermaid.stderr
    ids = node_ids(mermaid.stdout, r'^    (s\d+)\["(\w+)')
    assert f"class {ids['boom']} failed" in mermaid.stdout and f"class {ids['gated']} skipped" in mermaid.stdout
    assert f"{ids['start']} -->|hard| {ids['extra']}" in mermaid.stdout


def test_graph_of_a_file_and_of_an_unknown_run(daemon: DaemonProcess, tmp_path: Path) -> None:
    # Given a pipeline file; When its graph is shown as dot; Then it is the file's DAG, no run needed
    path = write_pipeline(tmp_path, "graphed.py", GRAPHED)
    dot = daemon.cli("graph", f"{path}:pipeline", "-f", "dot")
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith('digraph "graphed" {') and 'label="soft", style=dashed' in dot.stdout
    # When the target is neither a file nor a known run; Then one line says so, with not_found's exit status
    missing = daemon.cli("graph", "nosuchrun")
    assert missing.returncode != 0 and missing.stderr.startswith("tagent: ") and missing.stderr.count("\n") == 1
