"""What the worker template holds in memory: guards on the idle memory of daemon + template + workers (issue 17).

The template's heap is shared copy-on-write by every worker forked from it, so each module it imports is paid
once (and kept for the daemon's lifetime); each module a worker imports after the fork is paid once per worker.
These tests run the template's own warm-up (`tagentd.executor.template.warm_up`, what it does before its first
fork) in a fresh interpreter and read its `sys.modules`, and start a real daemon with its template: they fail
when the warm-up loads what no worker uses, or leaves for each worker to import what every worker imports.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DaemonProcess, children_of, is_worker_template, write_pipeline

from tagentd.executor.file_pages import clean_file_mappings
from tagentd.executor.template import NOT_PRELOADED

pytestmark = pytest.mark.timeout(120)

INSTALLED = [name for name in NOT_PRELOADED if importlib.util.find_spec(name) is not None]


def resident_kb(pid: int, path_part: str) -> int:
    """Resident kB of `pid`'s file mappings whose path contains `path_part` (from /proc/PID/smaps)."""
    total, counting = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and not fields[0].endswith(":"):
            counting = len(fields) > 5 and path_part in fields[5]
        elif counting and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def template_modules(then: str = "") -> dict[str, list[str]]:
    """sys.modules of a fresh interpreter after the template's warm-up (`before`), and what `then` adds (`added`)."""
    script = f"""
import json, sys
from tagentd.executor.template import warm_up
assert warm_up(), "the agent runtime did not import"
before = set(sys.modules)
{then}
print(json.dumps({{"before": sorted(before), "added": sorted(set(sys.modules) - before)}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_the_template_preloads_no_optional_integration_of_the_runtime_and_every_worker_import() -> None:
    """The legacy httpx package imports rich for its command-line client, merely because rich is installed; no
    step reaches that client. And what a forked worker runs first (tagentd.worker.start) must be in the shared
    heap, not imported by each worker."""
    # Given the template's warm-up in a fresh interpreter, and a worker's start-up after it
    modules = template_modules(then="import tagentd.worker.start")

    # Then none of the optional integrations' packages was imported
    loaded = set(modules["before"])
    assert not [name for name in INSTALLED if name in loaded], "the template imported packages no worker uses"
    # And the agent runtime itself was
    assert {"pydantic_ai.models.openai", "openai", "genai_prices.data_snapshot"} <= loaded
    # And a worker's start-up imports nothing the template has not imported already
    assert modules["added"] == []


def test_a_step_in_a_forked_worker_still_imports_what_the_template_left_out(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    if not INSTALLED:
        pytest.skip("none of the optional integrations' packages is installed")
    # Given a daemon whose workers are forked from its template
    daemon = make_daemon(workers=1, template=True).start()
    templates = [pid for pid in children_of(daemon.pid) if is_worker_template(pid)]
    assert len(templates) == 1, children_of(daemon.pid)

    # When a function step imports them in a worker forked from that template
    source = f"""
        import importlib
        from tagent_client import Pipeline

        pipeline = Pipeline("optional")

        @pipeline.task(max_retries=0)
        def use(ctx):
            return {{name: importlib.import_module(name).__name__ for name in {INSTALLED!r}}}
    """
    with daemon.client() as client:
        result = client.wait(client.submit(write_pipeline(tmp_path, "optional.py", source)).id, timeout=60)

    # Then each imports as in any Python process
    assert result.success, result.summary()
    assert result.step_outputs["use"] == {name: name for name in INSTALLED}
    assert set(daemon.worker_pids()) <= set(children_of(templates[0]))


SMAPS = """\
7f0000000000-7f0000100000 r-xp 00000000 08:01 11 /venv/_pydantic_core.so
Rss:                 400 kB
Anonymous:             0 kB
7f0000100000-7f0000104000 r--p 00100000 08:01 11 /venv/_pydantic_core.so
Rss:                  16 kB
Anonymous:            16 kB
7f0000104000-7f0000108000 rw-p 00104000 08:01 11 /venv/_pydantic_core.so
Rss:                  16 kB
Anonymous:            16 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Rss:                1024 kB
Anonymous:          1024 kB
7f0000300000-7f0000301000 r--s 00000000 00:05 12 /dev/shm/shared
Rss:                   4 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 r--p 00000000 08:01 13 /usr/lib/locale/locale-archive
Rss:                   0 kB
Anonymous:             0 kB
7f0000600000-7f0000602000 r--p 00000000 08:01 14 /venv/last.so
Rss:                   8 kB
Anonymous:             0 kB
"""


def test_only_read_only_file_mappings_without_private_copies_are_unmapped() -> None:
    """Dropping a page of a mapping with private copies (relocated data, the heap) would lose what was written."""
    # Given smaps lines of a library's code, its relocated read-only data and its data, the heap, a shared
    # mapping, a mapping with nothing resident and, last, another library's code
    # When the mappings to drop are chosen
    chosen = list(clean_file_mappings(SMAPS.splitlines(keepends=True)))

    # Then only the two read-only file mappings holding only file pages are
    assert chosen == [(0x7F0000000000, 0x100000), (0x7F0000600000, 0x2000)]


def test_the_template_leaves_the_extension_code_its_warm_up_ran_to_the_page_cache(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    """Importing and warming the runtime runs ~4 MB of pydantic-core's code once; mapped in the template alone,
    those pages counted in full in its PSS for the daemon's lifetime."""
    # Given a daemon with its worker template, warm and forking
    daemon = make_daemon(workers=1, template=True).start()
    templates = [pid for pid in children_of(daemon.pid) if is_worker_template(pid)]
    assert len(templates) == 1, children_of(daemon.pid)

    # Then the template keeps next to none of pydantic-core's pages mapped
    assert resident_kb(templates[0], "pydantic_core") < 512
