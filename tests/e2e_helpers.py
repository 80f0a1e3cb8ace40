"""What the end-to-end daemon tests (test_daemon_e2e.py, test_daemon_lifecycle.py) share: an example pipeline
file, a one-step pipeline that echoes its params, and a step's status as the daemon reports it."""

from __future__ import annotations

from conftest import REPO

from tagent_client.client.sync import Client

RESEARCH = REPO / "pipelines" / "examples" / "research.py"

ECHO = """
    from tagent_client import Pipeline

    pipeline = Pipeline("echo")

    @pipeline.task(final=True)
    def echo(ctx):
        return {"params": dict(ctx.params), "attempt": ctx.attempt}
"""


def step_status(client: Client, run_id: str, step: str) -> str:
    """The status ("running", "completed", ...) the daemon reports now for `step` of `run_id`."""
    return client.status(run_id).steps[step].status
