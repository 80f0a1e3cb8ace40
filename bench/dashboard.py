#!/usr/bin/env python
"""What an open dashboard costs the daemon: fan-out throughput with a browser on the run's page, and without.

    python bench/dashboard.py [--reps N] [--quick]

Two durable daemons (2 workers each) in private temp dirs: one plain, one with the dashboard (`TAGENTD_WEB=true`)
and headless Chromium (/usr/bin/chromium) showing, live, the page of each run it measures. Each repetition runs
bench/daemon.py's fan-out (1 → 500 → 1) once on each daemon, alternating, so machine load falls on both alike.
The first step waits for a message: the browser has the run's page open (its DAG drawn, its stream live) before
the fan-out starts. A run's fan-out time is from its first step's end to its last step's end (the daemon's
clock). Prints one JSON line: steps/s without and with the dashboard (medians) and the drop in percent.
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
for _p in (str(BENCH), str(REPO), str(REPO / "client")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from daemon import FANOUT_WIDTH  # noqa: E402  (bench/daemon.py's fan-out)
from harness import CLEANUP, enable_bytecode_cache, entry, report, running_daemon, say  # noqa: E402

from tagent_client.client.sync import Client  # noqa: E402

RESULT_FILE = BENCH / "results" / "dashboard-latest.json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SOURCE = textwrap.dedent(f"""
    from tagent_client import ExecutionMode, Pipeline

    async def noop():
        return None

    async def start(ctx):
        await ctx.receive(timeout=60)  # the bench sends it once the browser shows the run

    pipeline = Pipeline("bench_fanout_gated", max_concurrent_steps={FANOUT_WIDTH + 12})
    pipeline.step("start", fn=start)
    for i in range({FANOUT_WIDTH}):
        pipeline.step(f"f{{i:03d}}", fn=noop, depends_on=["start"], execution_mode=ExecutionMode.CONCURRENT)
    pipeline.step("end", fn=noop, depends_on=[f"f{{i:03d}}" for i in range({FANOUT_WIDTH})])
""")


def fan_out(client: Client, path: Path, before_release: Any = None) -> float:
    """One gated run: submit, let `before_release(run_id)` look at it, release it; steps/s of its fan-out."""
    run_id = client.submit(path).id
    if before_release is not None:
        before_release(run_id)
    client.send("bench_fanout_gated", {"go": True})
    result = client.wait(run_id, timeout=120)
    if not result.success:
        raise RuntimeError(f"run {run_id} ended {result.status}: {result.error}")
    began = result.step_metadata["start"]["finished_at"]
    return (FANOUT_WIDTH + 1) / (result.end_time - began)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="2 measured repetitions")
    args = parser.parse_args(argv)
    reps = 2 if args.quick else args.reps
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    enable_bytecode_cache()
    out: dict[str, Any] = {"bench": "dashboard", "fanout_width": FANOUT_WIDTH, "reps": reps}
    from playwright.sync_api import sync_playwright

    try:
        with running_daemon("plain", durable=True) as plain, running_daemon("web", durable=True) as web:
            web.env["TAGENTD_WEB"] = "true"
            plain.start()
            web.start()
            for daemon in (plain, web):
                (daemon.root / "fanout.py").write_text(SOURCE)
            with plain.client(timeout=120.0) as quiet, web.client(timeout=120.0) as watched, \
                    sync_playwright() as playwright:
                info: dict[str, Any] = {}
                deadline = time.monotonic() + 30
                while not info.get("url") and time.monotonic() < deadline:
                    info = watched.daemon_status().stats.get("web") or {}
                    time.sleep(0.1)  # ok-sleep: polling the dashboard's start, bounded by the deadline
                token = Path(info["token_file"]).read_text().strip()
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{info['url']}?token={token}")

                def show(run_id: str) -> None:
                    page.goto(f"{info['url']}#/runs/{run_id}")
                    page.wait_for_selector(".dag-box g.step[data-step='start'][data-state='running']", timeout=30_000)
                    page.wait_for_selector("#live[data-live=live]")

                for name, client, hook in (("plain", quiet, None), ("web", watched, show)):
                    fan_out(client, plain.root / "fanout.py" if name == "plain" else web.root / "fanout.py", hook)
                rates: dict[str, list[float]] = {"plain": [], "web": []}
                for rep in range(reps):
                    rates["plain"].append(fan_out(quiet, plain.root / "fanout.py"))
                    rates["web"].append(fan_out(watched, web.root / "fanout.py", show))
                    page.wait_for_selector(".dag-box g.step[data-step='end'][data-state='completed']", timeout=30_000)
                    say(f"  rep {rep + 1}: {rates['plain'][-1]:.0f} steps/s without, {rates['web'][-1]:.0f} with")
                browser.close()
        without, with_ = statistics.median(rates["plain"]), statistics.median(rates["web"])
        out.update(fanout_steps_per_s=round(without, 1), fanout_steps_per_s_dashboard_open=round(with_, 1),
                   drop_pct=round(100 * (without - with_) / without, 1),
                   runs={k: [round(v, 1) for v in vs] for k, vs in rates.items()})
    finally:
        CLEANUP.run()
    report(out, load_before, started, args.quick, RESULT_FILE)
    return 0


if __name__ == "__main__":
    entry(main)
