"""The design documents' step context fields (`pipeline_name`, `step_name`, `execution_attempt`,
`constraints`, `dependency_<name>`): documented on `StepContext`, equal through a real daemon and in-process."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from conftest import DaemonProcess, write_pipeline

from tagent_client import run_pipeline

PIPELINE = """
    from tagent_client import Pipeline, RetryableError

    def research(ctx):
        return {"facts": ["founded 1999"]}

    def report(ctx):
        if ctx.execution_attempt == 1:
            raise RetryableError("first try fails, so the second one reports its attempt")
        try:
            ctx.dependency_nothing
            unknown = "no error"
        except AttributeError as exc:
            unknown = str(exc)
        return {"pipeline_name": ctx.pipeline_name, "step_name": ctx.step_name,
                "execution_attempt": ctx.execution_attempt, "constraints": ctx.constraints,
                "dependency_research": ctx.dependency_research, "unknown": unknown}

    pipeline = Pipeline("context_fields", global_constraints=["Stay factual"])
    pipeline.step("research", fn=research)
    pipeline.step("report", fn=report, depends_on=["research"], constraints=["Be brief"],
                  max_retries=1, retry_delay=0.01)
"""

EXPECTED = {
    "pipeline_name": "context_fields",
    "step_name": "report",
    "execution_attempt": 2,
    "constraints": ["Be brief", "Stay factual"],
    "dependency_research": {"facts": ["founded 1999"]},
    "unknown": "step 'report' has no dependency 'nothing' (its dependencies: research)",
}


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("context_fields_pipeline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_documents_context_fields_are_the_same_in_a_worker_and_in_process(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a step with constraints, a pipeline with global ones, one dependency, and a first attempt that fails
    path = write_pipeline(tmp_path, "context_fields.py", PIPELINE)
    daemon = make_daemon().start()

    # When the pipeline runs through the daemon and in this process
    with daemon.client() as client:
        remote = client.wait(client.submit(path).id, timeout=30)
    local = asyncio.run(asyncio.wait_for(run_pipeline(_load(path).pipeline), timeout=20))

    # Then the step saw the documents' fields on its second attempt, with equal values in both
    for result in (remote, local):
        assert result.status == "completed", result.summary()
        assert result.step_outputs["report"] == EXPECTED
