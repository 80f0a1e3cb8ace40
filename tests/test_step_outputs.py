"""What a step may return or raise (tagent_client.run.outputs): the same rules through a real daemon and in-process.

An output the daemon could not store, or an exception that cannot even be printed, must fail its step with a
clear error and let the run end, never leave it RUNNING. NaN and infinity fail too (documented choice in
docs/semantics.md, "What a step may return").
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from conftest import DaemonProcess, write_pipeline

from tagent_client import run_pipeline

pytestmark = pytest.mark.timeout(90)

PIPELINE = """
    import math
    from pydantic import BaseModel
    from tagent_client import Pipeline

    pipeline = Pipeline("outputs")


    class Score(BaseModel):
        value: float


    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no message for you")


    @pipeline.task(max_retries=0)
    def produce(ctx, case):
        if case == "deep":
            value = []
            for _ in range(5000):
                value = [value]
            return value
        if case == "cyclic":
            value = []
            value.append(value)
            return value
        if case == "unprintable":
            raise Unprintable("boom")
        if case == "nan":
            return {"score": math.nan}
        if case == "inf":
            return {"scores": [1.0, -math.inf]}
        if case == "at_the_limit":
            value = "leaf"
            for _ in range(99):
                value = [value]
            return {"value": value, "score": 0.5}
        return Score(value=0.5)
"""

#: case -> (error type, fragments of the one-line message)
FAILURES = {
    "deep": ("StepOutputError", ["step 'produce' returned output nested more than 100 levels deep", "contains itself"]),
    "cyclic": ("StepOutputError", ["step 'produce' returned output nested more than 100 levels deep", "contains itself"]),
    "unprintable": ("Unprintable", ["Unprintable('boom')", "its str() raised RuntimeError"]),
    "nan": ("StepOutputError", ["step 'produce' returned nan at $.score", "JSON has no NaN or Infinity"]),
    "inf": ("StepOutputError", ["step 'produce' returned -inf at $.scores[1]", "JSON has no NaN or Infinity"]),
}


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("outputs_pipeline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unstorable_outputs_and_unprintable_errors_fail_their_step_and_the_run_ends(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given a daemon, and a step that returns (or raises) each kind of thing a worker cannot encode
    daemon = make_daemon().start()
    path = write_pipeline(tmp_path, "outputs.py", PIPELINE)
    with daemon.client() as client:
        # When a run is submitted for each case
        runs = {case: client.submit(path, {"case": case}).id for case in [*FAILURES, "at_the_limit"]}

        # Then each run ends FAILED, its step failed with the error type and a one-line message that says why
        for case, (kind, fragments) in FAILURES.items():
            result = client.wait(runs[case], timeout=30)
            assert result.status == "failed", (case, result.summary())
            error = client.status(runs[case]).steps["produce"].error or ""
            assert error.startswith(f"{kind}: ") and "\n" not in error, (case, error)
            for fragment in fragments:
                assert fragment in error, (case, error)
        # And an output nested exactly at the limit is stored and served back whole
        kept = client.wait(runs["at_the_limit"], timeout=30)
        assert kept.status == "completed", kept.summary()
        value = kept.step_outputs["produce"]["value"]
        for _ in range(99):
            value = value[0]
        assert value == "leaf"


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_the_in_process_runner_applies_the_same_rules(case: str, tmp_path: Path) -> None:
    # Given the same pipeline, run in this process
    pipeline = load(write_pipeline(tmp_path, "outputs.py", PIPELINE)).pipeline

    # When it runs the case (bounded: a hang fails the test)
    result = asyncio.run(asyncio.wait_for(run_pipeline(pipeline, params={"case": case}), timeout=20))

    # Then it fails the step exactly as the daemon does
    kind, fragments = FAILURES[case]
    assert result.status == "failed", result.summary()
    error = result.step_metadata["produce"]["error"]
    assert error.startswith(f"{kind}: ") and "\n" not in error, error
    for fragment in fragments:
        assert fragment in error, error


def test_the_in_process_runner_keeps_the_object_a_step_returned(tmp_path: Path) -> None:
    # Given a step whose output passes the rules
    pipeline = load(write_pipeline(tmp_path, "outputs.py", PIPELINE)).pipeline

    # When it runs in this process, Then its output is the model it returned (the daemon stores it as data)
    result = asyncio.run(asyncio.wait_for(run_pipeline(pipeline, params={"case": "model"}), timeout=20))
    assert result.success, result.summary()
    output = result.step_outputs["produce"]
    assert type(output).__name__ == "Score" and output.value == 0.5
