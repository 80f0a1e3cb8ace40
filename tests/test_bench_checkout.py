"""bench/harness.py's daemon (every bench script's) is its own checkout's, wherever it is run from.

`python -m tagentd` puts its working directory first on sys.path. A/B runs of two checkouts (issue 17's rule:
this branch against an unchanged main) start one checkout's bench from the other's directory; the daemon then
imported that directory's tagentd, with the bench's own client library, whatever PYTHONPATH said, and "main"
measured the branch's daemon.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(90)


def test_the_bench_daemon_runs_its_own_checkouts_tagentd_from_any_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the bench's module, run from a directory holding another "checkout" whose tagentd cannot be imported
    spec = importlib.util.spec_from_file_location("bench_harness_under_test", REPO / "bench" / "harness.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_harness_under_test", bench)
    spec.loader.exec_module(bench)
    other = tmp_path / "other-checkout"
    (other / "tagentd").mkdir(parents=True)
    (other / "tagentd" / "__init__.py").write_text("raise ImportError('the tagentd of another checkout')\n")
    monkeypatch.chdir(other)
    # When it starts its daemon
    root = tmp_path / "bench"
    root.mkdir()
    daemon = bench.BenchDaemon(root, durable=False)
    try:
        ready = daemon.start(timeout=60.0)
        # Then that daemon answers: it imported this checkout's tagentd, not the one in the working directory
        assert ready > 0
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        bench.CLEANUP.run()
