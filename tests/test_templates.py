"""Every template of the library (pipelines/templates/) runs on the `test` model, in-process and through a daemon.

The agent steps' outputs on the `test` model are placeholders, so each template is checked by what its
Python steps make of real data: the brief names the company, the price figures come from the sample
catalog, the digest lists each sample document with its word count and its own sentences, the gate
counts the notes' claims, the monitor keeps its history in a shared space and alerts, and the review
loop waits for a person (played by the test) and publishes only what was approved.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until

from tagent_client import Pipeline, PipelineResult, run_agent, run_pipeline
from tagent_client.define.templates import TEMPLATES_DIR, list_templates

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "pipelines" / "templates"
SAMPLE_DOCUMENTS = TEMPLATES / "samples" / "documents"
SAMPLE_WORDS = {path.name: len(path.read_text().split()) for path in sorted(SAMPLE_DOCUMENTS.iterdir())}


def template(name: str) -> Path:
    return TEMPLATES / f"{name}.py"


# -- what each batch template's result must hold ------------------------------------------------------


def check_company_research(result: PipelineResult, company: str = "Acme Corp") -> None:
    brief = result.final_output
    assert brief["company"] == company and 0 <= brief["score"] <= 5
    assert brief["markdown"].startswith(f"# {company}: research brief for the investment committee")
    assert "## Strengths" in brief["markdown"] and "## Risks" in brief["markdown"]


def check_ecommerce_gap(result: PipelineResult) -> None:
    # wireless earbuds in the sample catalog: 4 offers from 34.50 to 129.00
    stats = result.step_outputs["price_stats"]
    assert (stats["sellers"], stats["min"], stats["median"], stats["max"]) == (4, 34.5, 69.45, 129.0)
    assert stats["market_gap"] is True and "market_validation" in result.step_outputs
    assert result.final_output["verdict"] == "market gap: prices spread 136% around the median"


def check_ecommerce_no_gap(result: PipelineResult) -> None:
    # usb-c cable: 4 offers within 9.50 to 11.00, no gap: validation and report skipped, the run still completes
    assert result.step_outputs["price_stats"]["market_gap"] is False
    assert set(result.skipped_steps) == {"market_validation", "business_report", "summary"}
    assert result.skipped_steps["market_validation"].startswith("condition false")


def check_summarise_folder(result: PipelineResult) -> None:
    digest = result.final_output
    assert {d["file"]: d["words"] for d in digest["documents"]} == SAMPLE_WORDS
    assert digest["total_words"] == sum(SAMPLE_WORDS.values())
    for document in digest["documents"]:  # the lead sentences are the file's own, two of them
        text = (SAMPLE_DOCUMENTS / document["file"]).read_text()
        assert len(document["lead"]) == 2 and all(sentence in text for sentence in document["lead"])
    assert f"## roadmap-q3.md ({SAMPLE_WORDS['roadmap-q3.md']} words)" in digest["markdown"]


def check_multi_source(result: PipelineResult) -> None:
    gate = result.step_outputs["cross_check"]
    assert gate["valid"] is True and "local_notes" in gate["contributed"]
    assert "Ground-source heat pumps are more efficient all year round but need drilling or a large garden." in gate["claims"]
    assert result.final_output["topic"] == "heat pumps" and "## Claims" in result.final_output["markdown"]


def check_multi_source_gate_closed(result: PipelineResult) -> None:
    assert result.step_outputs["cross_check"]["valid"] is False
    assert set(result.skipped_steps) == {"synthesis", "brief"}
    assert result.skipped_steps["synthesis"] == "validation gate 'cross_check' did not pass"


#: (template, params, check): the templates that run to their end on their own
BATCH: list[tuple[str, dict[str, Any], Callable[[PipelineResult], None]]] = [
    ("company_research", {}, check_company_research),
    ("company_research", {"company": "Initech"}, lambda r: check_company_research(r, "Initech")),
    ("ecommerce_analysis", {}, check_ecommerce_gap),
    ("ecommerce_analysis", {"product": "usb-c cable"}, check_ecommerce_no_gap),
    ("summarise_folder", {}, check_summarise_folder),
    ("multi_source_research", {}, check_multi_source),
    ("multi_source_research", {"min_sources": 4}, check_multi_source_gate_closed),
]


def test_the_library_holds_at_least_six_documented_templates() -> None:
    # Given the template folder: the client's package data, which the repository's pipelines/templates links to
    assert TEMPLATES.is_symlink() and TEMPLATES.resolve() == TEMPLATES_DIR
    templates = list_templates()
    # Then there are at least six, each with a summary and its params with defaults, each covered here
    assert len(templates) >= 6
    for t in templates:
        assert t.summary and "Params" in t.description and "Run it" in t.description and "Change first" in t.description
        assert t.params and all(v is not None for v in t.params.values())
    covered = {name for name, _, _ in BATCH} | {"sensor_monitor", "review_loop"}
    assert {t.path.stem for t in templates} <= covered


def test_the_listed_params_are_the_pipelines_declared_defaults() -> None:
    # Given every template, read as text (the listing) and imported (what runs)
    for t in list_templates():
        # Then both agree on the params and their defaults
        assert Pipeline.load(t.path).param_defaults == t.params, t.name


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "params", "check"), BATCH,
                         ids=[f"{n}-{'-'.join(map(str, p.values())) or 'defaults'}" for n, p, _ in BATCH])
def test_a_template_runs_in_process_on_the_test_model(name: str, params: dict[str, Any],
                                                      check: Callable[[PipelineResult], None]) -> None:
    # Given the template, loaded as a user would
    pipeline = Pipeline.load(template(name))
    # When it runs in this process on the test model
    result = run_agent(pipeline, model="test", params=params)
    # Then it completed with the content its Python steps make of the sample data
    assert result.success, result.summary()
    check(result)


@pytest.mark.timeout(180)
def test_the_batch_templates_run_through_the_daemon(make_daemon: Callable[..., DaemonProcess]) -> None:
    # Given a daemon
    daemon = make_daemon().start()
    # When each template is submitted with `tagent submit` on the test model (all at once)
    runs = []
    for name, params, check in BATCH:
        args = [a for key, value in params.items() for a in ("--param", f"{key}={value}")]
        done = daemon.cli("submit", str(template(name)), *args, "--model", "test")
        assert done.returncode == 0, done.stderr
        runs.append((done.stdout.strip(), name, check))
    # Then each completes with the same content as in-process
    with daemon.client() as client:
        for run_id, name, check in runs:
            result = client.wait(run_id, timeout=120)
            assert result.success, f"{name}: {result.summary()}"
            check(result)


# -- the monitor: runs started by events -----------------------------------------------------------------


def test_the_monitor_checks_its_reading_param_in_process() -> None:
    # Given the monitor, run in-process (no triggers there): it checks its `reading` param
    pipeline = Pipeline.load(template("sensor_monitor"))
    sensor = f"pump-{uuid.uuid4().hex[:8]}"
    # When a reading over the threshold and one under it are checked
    hot = run_agent(pipeline, model="test", params={"reading": {"sensor": sensor, "value": 95}})
    cool = run_agent(pipeline, model="test", params={"reading": {"sensor": sensor, "value": 40}})
    # Then the hot one alerts and gets an incident note; the cool one does not; the history holds both
    assert hot.success and cool.success
    assert hot.final_output["status"] == "alert" and "incident_note" in hot.step_outputs
    assert cool.final_output == {"sensor": sensor, "value": 40.0, "threshold": 80.0, "status": "ok",
                                 "average": 67.5, "readings": 2}
    assert set(cool.skipped_steps) == {"alert", "incident_note"}


@pytest.mark.timeout(120)
def test_the_monitor_runs_once_per_published_reading_through_the_daemon(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    # Given a daemon with the monitor submitted: it is registered for sensors.reading, not run
    daemon = make_daemon().start()
    done = daemon.cli("submit", str(template("sensor_monitor")), "--model", "test")
    assert done.returncode == 0 and "registered pipeline sensor_monitor" in done.stdout, done.stderr
    with daemon.client() as client, client.subscribe("sensors.alert") as alerts:
        # When two readings are published, one over the threshold
        for value in (97.2, 61.0):
            assert daemon.cli("publish", "sensors.reading", f'{{"sensor": "boiler-1", "value": {value}}}').returncode == 0
        # Then one run per reading completes, with the defaults as params
        def completed() -> list[str] | None:
            ids = [r.run_id for r in client.runs() if r.pipeline == "sensor_monitor" and r.status == "completed"]
            return ids if len(ids) == 2 else None

        finished = wait_until(completed, 60, what="two completed runs of sensor_monitor")
        results = sorted((client.wait(run_id, timeout=30) for run_id in finished), key=lambda r: -r.final_output["value"])
        assert [(r.final_output["value"], r.final_output["status"]) for r in results] == [(97.2, "alert"), (61.0, "ok")]
        assert "incident_note" in results[0].step_outputs and "alert" in results[1].skipped_steps
        # and the history is in the space, the alert announced and kept
        assert sorted(r["value"] for r in client.space("monitoring").get("boiler-1").value) == [61.0, 97.2]
        assert client.space("monitoring").get("boiler-1/alert").value["value"] == 97.2
        event = alerts.get(timeout=10)
        assert event is not None and event.topic == "sensors.alert" and event.data["value"] == 97.2
    assert daemon.cli("unregister", "sensor_monitor").returncode == 0


# -- the review loop: a person decides through a shared space -----------------------------------------------


REVIEWER = Pipeline("reviewer")


@REVIEWER.task()
async def decide(ctx) -> str:
    """The person, in-process: asks for changes with a revised text in round 1, approves round 2."""
    space = ctx.space("reviews")
    for round_, decision in ((1, {"approved": False, "comments": "shorter", "body": "Offline mode is here."}),
                             (2, {"approved": True, "by": "ana"})):
        while True:
            entry = await space.get("announcement")
            if entry is not None and entry.value.get("round") == round_ and entry.value["status"] == "waiting":
                break
            await ctx.wait_for_event("space.reviews.announcement", timeout=1)
        await space.put("announcement/decision", decision)
    return "decided"


@pytest.mark.timeout(60)
def test_the_review_loop_publishes_what_the_person_approved_in_process() -> None:
    # Given the review loop and a person (another pipeline of this process, sharing its spaces)
    pipeline = Pipeline.load(template("review_loop"))

    async def both() -> tuple[PipelineResult, PipelineResult]:
        return await asyncio.gather(run_pipeline(pipeline, model="test"), run_pipeline(REVIEWER))

    # When the person sends a revised text back in round 1 and approves round 2
    result, person = asyncio.run(both())
    # Then the revised text is published, after two rounds
    assert result.success and person.success, result.summary()
    review = result.step_outputs["review"]
    assert review["approved"] is True and review["reason"] == "approved by ana" and len(review["rounds"]) == 2
    assert result.final_output["body"] == "Offline mode is here."


@pytest.mark.timeout(60)
def test_the_review_loop_gives_up_after_its_timeout_and_publishes_nothing() -> None:
    # Given the review loop with a short timeout and nobody deciding
    pipeline = Pipeline.load(template("review_loop"))
    # When it runs
    result = run_agent(pipeline, model="test", params={"timeout": 0.5, "document": "unanswered"})
    # Then the run completes, not approved, and publish is skipped
    assert result.success
    assert result.step_outputs["review"]["approved"] is False
    assert result.step_outputs["review"]["reason"] == "no decision within 0.5 s"
    assert set(result.skipped_steps) == {"publish"}


@pytest.mark.timeout(120)
def test_the_review_loop_waits_for_a_decision_put_with_the_cli_through_the_daemon(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    # Given a daemon, and an old decision left from an earlier review
    daemon = make_daemon().start()
    assert daemon.cli("space", "put", "reviews", "announcement/decision", '{"approved": true}').returncode == 0
    # When the review loop is submitted
    done = daemon.cli("submit", str(template("review_loop")), "--model", "test")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    with daemon.client() as client:
        # Then it asks for review in the space, and waits (the old decision does not count)
        wait_until(lambda: (e := client.space("reviews").get("announcement")) is not None
                   and e.value.get("status") == "waiting" and e.value.get("run") == run_id, 30, what="a review request")
        assert client.status(run_id).status == "running"
        # When a person rejects with a revised text, then approves the next round, with `tagent space put`
        put = daemon.cli("space", "put", "reviews", "announcement/decision",
                         '{"approved": false, "comments": "warmer", "body": "Good news: offline mode."}')
        assert put.returncode == 0, put.stderr
        wait_until(lambda: client.space("reviews").get("announcement").value.get("round") == 2, 30, what="round 2")
        assert daemon.cli("space", "put", "reviews", "announcement/decision", '{"approved": true, "by": "ana"}').returncode == 0
        result = client.wait(run_id, timeout=30)
        # Then the revised text is published, in the result and in the space
        assert result.success, result.summary()
        assert result.final_output["body"] == "Good news: offline mode."
        assert client.space("reviews").get("announcement/published").value["body"] == "Good news: offline mode."
        assert client.space("reviews").get("announcement").value["status"] == "approved"


@pytest.mark.timeout(180)
def test_the_review_loop_goes_on_with_its_round_after_kill_9(make_daemon: Callable[..., DaemonProcess]) -> None:
    # Given a review loop through a daemon, in round 2 after a person sent back a revised text
    daemon = make_daemon().start()
    run_id = daemon.cli("submit", str(template("review_loop")), "--model", "test").stdout.strip()
    with daemon.client() as client:
        wait_until(lambda: client.space("reviews").get("announcement") is not None, 30, what="round 1")
        put = daemon.cli("space", "put", "reviews", "announcement/decision",
                         '{"approved": false, "comments": "warmer", "body": "Good news: offline mode."}')
        assert put.returncode == 0, put.stderr
        wait_until(lambda: client.space("reviews").get("announcement").value.get("round") == 2, 30, what="round 2")
    # When the daemon and its workers are killed -9, and the person approves once it is back
    daemon.kill9()
    daemon.start()
    assert daemon.cli("space", "put", "reviews", "announcement/decision", '{"approved": true, "by": "ana"}').returncode == 0
    with daemon.client() as client:
        result = client.wait(run_id, timeout=60)
    # Then the re-run step went on with round 2 and its revised text, and took the approval
    assert result.success, result.summary()
    review = result.step_outputs["review"]
    assert [r["round"] for r in review["rounds"]] == [1, 2] and review["approved"] is True
    assert result.final_output["body"] == "Good news: offline mode."
    assert result.step_metadata["review"]["attempts"] == 2
