"""The garbage collector's pace in the daemon and its workers (tagentd/plumbing/collector.py): the youngest
generation is collected every `collector.YOUNG` allocations, not Python's default 700, in the daemon once it has
started and in every worker, forked from the template or not."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, DaemonProcess, write_pipeline

from tagentd.plumbing import collector

THRESHOLD = """
    import gc

    from tagent_client import Pipeline


    def threshold():
        return gc.get_threshold()[0]


    pipeline = Pipeline("collector_pace")
    pipeline.step("threshold", fn=threshold)
"""


@pytest.mark.parametrize("template", [True, False])
def test_a_worker_collects_its_youngest_generation_every_young_allocations(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path, template: bool) -> None:
    """Given a daemon whose workers are forked from the template (or started on their own), when a step reports
    its worker's collector threshold, then it is collector.YOUNG."""
    daemon = make_daemon(workers=1, template=template).start()
    path = write_pipeline(tmp_path, "pace.py", THRESHOLD)
    with daemon.client() as client:
        result = client.wait(client.submit(path).id, timeout=30)
    assert result.success, result.error
    assert result.step_outputs["threshold"] == collector.YOUNG > 700


def test_the_daemon_collects_at_that_pace_once_started() -> None:
    """Given the daemon's start-up (collection off, as `tagentd start --foreground` turns it), when it is done
    (`collect_after_start`), then the collector is on, at collector.YOUNG, the older generations at Python's ratios."""
    code = ("import gc; gc.disable(); from tagentd.app.daemon import collect_after_start; collect_after_start(); "
            "print(gc.isenabled(), *gc.get_threshold())")
    env = {"PYTHONPATH": f"{REPO / 'client'}:{REPO}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", str(collector.YOUNG), "10", "10"]
