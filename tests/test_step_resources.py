"""A step's `resources=`: validated when the pipeline is checked, carried in the plan and each Dispatch, and
ignored where steps run on this machine; `executor = "ray"` is a setting, and only a Ray daemon imports Ray."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tagent_client import Pipeline
from tagent_client.core.engine import RunMachine
from tagent_client.core.events import Dispatch
from tagent_client.run.local import run_pipeline
from tagentd.settings.config import load_settings

pytestmark = pytest.mark.timeout(60)


def problems_of(resources: Any) -> list[str]:
    return Pipeline("p").step("a", fn=lambda: 1, resources=resources).problems()


@pytest.mark.parametrize(("resources", "expected"), [
    ("gpu", "step 'a': resources must be a mapping like {'num_cpus': 4}, got str"),
    ({"num_gpus": -1}, "step 'a': resources['num_gpus'] must be >= 0, got -1"),
    ({"num_cpus": "4"}, "step 'a': resources['num_cpus'] must be a number, got '4'"),
    ({"num_cpus": True}, "step 'a': resources['num_cpus'] must be a number, got True"),
    ({"memory": 1.5}, "step 'a': resources['memory'] must be a whole number of bytes > 0, got 1.5"),
    ({"custom_x": 0}, "step 'a': resources['custom_x'] must be > 0, and a whole number above 1, got 0"),
    ({"custom_x": 2.5}, "step 'a': resources['custom_x'] must be > 0, and a whole number above 1, got 2.5"),
    ({"GPU": 1}, "step 'a': resources['GPU']: write 'num_gpus' instead"),
    ({"has space": 1}, "step 'a': resources['has space']: a resource name starts with a letter or _ and uses "
                       "letters, digits, _ . : - (at most 64 characters)"),
])
def test_bad_resources_are_refused_with_what_is_wrong(resources: Any, expected: str) -> None:
    # Given a step with bad resources=; When the pipeline is checked; Then one line says what and where
    assert problems_of(resources) == [expected]


def test_good_resources_reach_the_plan_and_each_dispatch() -> None:
    # Given steps asking for CPUs, a fraction of a GPU with memory, and a custom resource
    asks = {"num_cpus": 4, "num_gpus": 0.5, "memory": 2**30, "custom_x": 1}
    p = Pipeline("p").step("a", fn=lambda: 1, resources=asks).step("b", fn=lambda: 2)
    assert p.problems() == []
    # When the engine dispatches them
    machine = RunMachine.new(p.plan(), "run-1", params=None, now=0.0, rng=random.Random(1))
    dispatches = {a.step: a for a in machine.start(0.0) if isinstance(a, Dispatch)}
    # Then the resources travel with the step's attempts (and a step without them asks for none)
    assert dispatches["a"].resources == asks
    assert p.plan().step("b").resources == {}


def test_where_steps_run_on_this_machine_resources_are_ignored() -> None:
    # Given a step that asks for a GPU this machine does not have; When it runs in process
    p = Pipeline("p").step("a", fn=lambda: "ran", resources={"num_gpus": 1}, final=True)
    result = asyncio.run(asyncio.wait_for(run_pipeline(p), timeout=10))
    # Then it runs as any step (placement is the Ray executor's; docs/scale-out.md)
    assert result.final_output == "ran"


def test_the_executor_setting_takes_local_or_ray_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    settings, sources = load_settings(None, {"executor": "ray", "ray_address": "auto"})
    assert (settings.executor, settings.ray_address, sources["executor"]) == ("ray", "auto", "flag --executor")
    monkeypatch.setenv("TAGENTD_RAY_RUNTIME_ENV", '{"env_vars": {"A": "1"}}')
    assert load_settings(None, {})[0].ray_runtime_env == {"env_vars": {"A": "1"}}
    with pytest.raises(Exception, match="executor"):
        load_settings(None, {"executor": "k8s"})


def test_a_local_daemon_does_not_import_ray() -> None:
    # Given the daemon's modules, as `tagentd start` loads them with the default (local) executor
    code = ("import sys; from tagentd.app import daemon, executors; "
            "print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    # When they are imported; Then Ray is not (its import costs seconds and memory)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "False"
