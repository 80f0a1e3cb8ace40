"""The design documents' usage samples (tests/design_samples/) run verbatim, in-process and through a daemon.

Each sample is the document's code with only the import line changed to `tagent_client`, run with
TAGENT_MODEL=test. In-process: the file is executed as a script (its own `run_agent(...)` call runs).
Through the daemon: the same file is submitted, and `Client.wait` must give a PipelineResult equal to
the in-process one: same shape, same typed outputs.
"""

from __future__ import annotations

import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonProcess

from tagent_client import Pipeline, PipelineResult, run_agent

SAMPLES = Path(__file__).parent / "design_samples"


@pytest.fixture(autouse=True)
def test_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The samples name no model: the environment gives it, to this process and to the daemon started after."""
    monkeypatch.setenv("TAGENT_MODEL", "test")


def run_sample(name: str) -> dict[str, Any]:
    """Execute a sample file as a script; its globals."""
    return runpy.run_path(str(SAMPLES / name), run_name=f"design_sample_{Path(name).stem}")


def comparable(result: PipelineResult) -> dict[str, Any]:
    """What must be equal in-process and through the daemon (not run ids nor times)."""
    return {
        "pipeline_name": result.pipeline_name, "status": result.status, "success": result.success,
        "step_outputs": result.step_outputs, "final_output": result.final_output,
        "failed_steps": result.failed_steps, "skipped_steps": result.skipped_steps,
        "token_usage": result.token_usage, "total_cost": result.total_cost,
        "steps": {n: (m["status"], m["attempts"], m["skip_reason"]) for n, m in result.step_metadata.items()},
    }


def through_daemon(make_daemon: Callable[..., DaemonProcess], sample: str, variable: str,
                   pipeline: Pipeline) -> PipelineResult:
    """Submit the pipeline held in `variable` of `sample` to a fresh daemon and wait for its result, typed by
    the pipeline's schemas."""
    daemon = make_daemon().start()
    schemas = {s.name: s.output_schema for s in pipeline.steps if s.output_schema is not None}
    with daemon.client() as client:
        handle = client.submit(f"{SAMPLES / sample}:{variable}")
        return client.wait(handle.id, timeout=60, schemas=schemas)


@pytest.mark.timeout(90)
def test_company_research_sample_runs_verbatim_in_process_and_through_the_daemon(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    """pipeline-architecture.md, "Example 1: Company Research Pipeline"."""
    # Given the sample, run as written: its last line is `result = run_agent(Pipeline(company_research))`
    sample = run_sample("company_research.py")
    local: PipelineResult = sample["result"]
    # Then the copy ran every step, the concurrent ones after web_search, and the report last
    assert local.success, local.summary()
    assert list(local.step_outputs) == ["web_search", "reclame_aqui_check", "social_media_analysis", "final_report"]
    assert local.final_output == local.step_outputs["final_report"]
    # When the same file is submitted to a daemon
    remote = through_daemon(make_daemon, "company_research.py", "company_research", sample["company_research"])
    # Then both results are equal
    assert comparable(remote) == comparable(local)


@pytest.mark.timeout(90)
def test_output_schema_sample_gives_typed_outputs_in_process_and_through_the_daemon(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    """pipeline-architecture.md, "Structured Output Schemas and Results", "Usage Example"."""
    # Given the sample, run as written (it reads step_outputs and result.final_output)
    sample = run_sample("output_schemas.py")
    local: PipelineResult = sample["result"]
    # Then every output is an instance of its step's schema, and the final output is the last step's
    assert local.success, local.summary()
    assert isinstance(sample["company_info"], sample["CompanyInfo"])
    assert isinstance(sample["reputation"], sample["ReputationAnalysis"])
    assert isinstance(sample["final_report"], sample["CompanyReport"])
    assert sample["final_report"] is local.step_outputs["final_report"]
    # When the same file is submitted to a daemon
    remote = through_daemon(make_daemon, "output_schemas.py", "pipeline", sample["pipeline"])
    # Then the daemon's result is equal, typed by the same schemas
    assert comparable(remote) == comparable(local)
    assert isinstance(remote.final_output, sample["CompanyReport"])


@pytest.mark.timeout(90)
def test_ecommerce_sample_runs_verbatim_in_process_and_through_the_daemon(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    """pipeline-architecture.md, "Example 2: E-commerce Analysis Pipeline" (it defines the pipeline only).
    Its market_validation step is CONDITIONAL with only a constraint as its condition: the step's model (the
    `test` model here, which always judges True, see docs/agents.md) decides before it runs."""
    # Given the sample: its tools_filter names tools nobody provides, which is a warning, not an error
    sample = run_sample("ecommerce_analysis.py")
    pipeline = sample["ecommerce_pipeline"]
    assert pipeline.warnings() == [
        "step 'product_search': tools_filter names 'web_search', 'price_comparison', which no tool provides "
        "(known: none); the step runs without them"]
    # When it runs in-process and through a daemon
    local = run_agent(pipeline)
    remote = through_daemon(make_daemon, "ecommerce_analysis.py", "ecommerce_pipeline", pipeline)
    # Then it finishes with the business report, the judged step ran, and both results are equal
    assert local.success, local.summary()
    assert "business_report" in local.step_outputs and "market_validation" in local.step_outputs
    assert local.token_usage["market_validation"].requests == 2  # the judgement, then the step itself
    assert comparable(remote) == comparable(local)


def test_samples_are_verbatim_but_for_their_imports() -> None:
    """Each sample names its document section in its first comment, and imports only from tagent_client
    and the standard library or pydantic (the import lines are the only change to the document's code)."""
    for path in sorted(SAMPLES.glob("*.py")):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("# From the design document \"TAgent Pipeline Architecture\""), path.name
        imports = [ln for ln in lines if ln.startswith(("import ", "from "))]
        assert all(ln.split()[1] in {"tagent_client", "pydantic", "typing", "os"} for ln in imports), (path.name, imports)
