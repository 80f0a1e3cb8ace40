"""Helpers of the dashboard's tests: a daemon started with --web, its dashboard's address, login and process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import DaemonProcess, wait_until

#: A pipeline whose steps each wait for a message the test sends (`client.send("gated", ...)`): the test, not a
#: clock, decides when each step ends. `first` takes the first message, `second` (after it) the next.
GATED = """
from tagent_client import Pipeline

pipeline = Pipeline("gated")

@pipeline.task()
async def first(ctx):
    message = await ctx.receive(timeout=50)
    ctx.log.info("first got %s", message.payload)
    return message.payload

@pipeline.task(depends_on=["first"], final=True)
async def second(ctx):
    message = await ctx.receive(timeout=50)
    return message.payload
"""

#: A pipeline with a step that fails (no retry) and one skipped because of it.
FAILING = """
from tagent_client import Pipeline

pipeline = Pipeline("failing")

@pipeline.task()
def load(ctx):
    ctx.log.info("loaded 3 rows")
    return {"rows": 3}

@pipeline.task(depends_on=["load"], max_retries=0)
def parse(ctx):
    raise ValueError("bad data in row 7")

@pipeline.task(depends_on=["parse"], final=True)
def report(ctx):
    return "never"
"""


def web_info(daemon: DaemonProcess, timeout: float = 30.0) -> dict[str, Any]:
    """The dashboard's entry of `daemon_status` once it listens: url, pid, token_file, restarts."""

    def ready() -> dict[str, Any] | None:
        with daemon.client(timeout=5.0) as c:
            web = c.daemon_status().stats.get("web") or {}
        return web if web.get("url") else None

    return wait_until(ready, timeout, interval=0.05, what="the dashboard to listen")


def token(info: dict[str, Any]) -> str:
    return Path(info["token_file"]).read_text().strip()


def login_url(info: dict[str, Any]) -> str:
    return f"{info['url']}?token={token(info)}"
