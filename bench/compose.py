#!/usr/bin/env python
"""Benchmark: what composition costs — a child run per item, and steps added at run time.

    python bench/compose.py [--items N] [--reps R] [--quick]

One durable `tagentd --workers 2` in private temp dirs (bench/harness.py's helpers) runs three
pipelines over the same N items, each item one trivial function step:

- inline: one PARALLEL_MERGE step over the items (N tasks of one run) — the baseline;
- children: a sub-pipeline step over the items (`pipeline=child, over=...`): N child runs, each
  created by the daemon, run, and fed back to its parent;
- added: a step that calls `ctx.add_step` N times; the added steps then run in the same run.

Each time is the run's own `finished_at - started_at` (the daemon's clock), median of R runs after
one warm-up. `child_run_ms` = (children - inline) / N is what one child run adds over a task;
`added_step_ms` = (added - inline) / N what one added step adds. Prints ONE JSON line on stdout
(progress on stderr) and writes it to bench/results/compose-latest.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(REPO / "client"), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from harness import CLEANUP, enable_bytecode_cache, entry, repeat, report, running_daemon, say  # noqa: E402

RESULT_FILE = BENCH / "results" / "compose-latest.json"


def pipeline_source(items: int) -> str:
    return textwrap.dedent(f"""
        from tagent_client import ExecutionMode, Pipeline

        ITEMS = list(range({items}))

        def one(ctx, item):
            return item * 2

        def items():
            return ITEMS

        def double_n(n):
            return n * 2

        child = Pipeline("child")
        child.step("double", fn=double_n)

        inline = Pipeline("inline")
        inline.step("items", fn=items)
        inline.step("each", fn=one, execution_mode=ExecutionMode.PARALLEL_MERGE, over="items", depends_on=["items"])

        children = Pipeline("children")
        children.step("items", fn=items)
        children.step("each", pipeline=child, over="items", depends_on=["items"], params=lambda item: {{"n": item}})

        def double(ctx):
            return 2

        def plan(ctx):
            for i in ITEMS:
                ctx.add_step(f"added_{{i}}", fn=double, depends_on=["plan"])
            return len(ITEMS)

        added = Pipeline("added")
        added.step("plan", fn=plan)
    """)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 items, 1 measured run each")
    args = parser.parse_args(argv)
    items, reps = (20, 1) if args.quick else (args.items, args.reps)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    enable_bytecode_cache()
    out: dict[str, Any] = {"bench": "compose", "items": items, "reps": reps}
    try:
        with running_daemon("compose", durable=True) as daemon:
            source = daemon.root / "compose.py"
            source.write_text(pipeline_source(items))
            daemon.start()
            with daemon.client(timeout=120.0) as client:
                for name in ("inline", "children", "added"):
                    say(f"{name}: {items} items")
                    _, times = repeat(client, Path(f"{source}:{name}"), reps)  # FILE:NAME picks the pipeline
                    out[f"{name}_ms"] = round(statistics.median(times) * 1000, 1)
        out["child_run_ms"] = round((out["children_ms"] - out["inline_ms"]) / items, 2)
        out["added_step_ms"] = round((out["added_ms"] - out["inline_ms"]) / items, 2)
    finally:
        CLEANUP.run()
    report(out, load_before, started, args.quick, RESULT_FILE)
    return 0


if __name__ == "__main__":
    entry(main)
