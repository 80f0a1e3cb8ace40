"""Reporter — a pipeline that waits for work in its mailbox (offline, no model).

Each run takes the next message sent to the pipeline "reporter" and reports on the
company it names. Until a message comes, the run waits (and can be cancelled,
resumed, inspected):

    tagent submit pipelines/examples/reporter.py       # prints the run id; the run waits
    tagent send reporter '{"company": "Acme"}'         # ... and now it finishes
    tagent wait RUN

The message is acknowledged when the step succeeds; if the run is cancelled or the
daemon stops first, it goes back to the mailbox for the next run (docs/broker.md).
"""

from tagent_client import Pipeline

pipeline = Pipeline("reporter", description="Report on the company named in the next message")


@pipeline.task(timeout=3600, final=True)
async def report(ctx):
    """Wait for one message ({"company": NAME}) and report on it."""
    message = await ctx.receive()  # waits until a message arrives
    company = message.payload["company"]
    ctx.log.info("reporting on %s (message %s from %s)", company, message.id, message.sender)
    return {"company": company, "report": f"{company}: nothing to worry about"}
