"""Watch sensor readings as they are published: keep a history, alert above a threshold, write up incidents.

Driven by triggers: submitted to the daemon, this pipeline is *registered*, and every event
published on `sensors.reading` starts a run of it (bounded and durable: docs/broker.md):

    check (Python: the reading against the threshold; the history in a shared space)
      -> alert (Python, only when check says "alert": an event on sensors.alert, the alert in the space)
      -> incident_note (agent: what happened and what to do next)

The space (`space`, default "monitoring") holds, per sensor, the last `keep` readings under
`<sensor>` (each with the id of its event) and the latest alert under `<sensor>/alert`:
`tagent space get monitoring boiler-1`. Runs of concurrent events update the history with
compare-and-set, so none is lost, and a run that runs again after a crash adds its reading once.

Params (`--param NAME=VALUE`; the defaults are the `params=` of the Pipeline below):
    threshold  a reading above this is an alert                         default 80.0
    space      the shared space for history and alerts                  default "monitoring"
    keep       readings kept per sensor                                 default 50
    reading    the reading to check when no event started the run
               (in-process, or `tagent submit --run`)                   default {"sensor": "boiler-1", "value": 91.5}

Run it (the agent step uses the run's model; `test` runs offline, without an API key):
    tagent submit sensor_monitor.py --model test       # registers it: one run per event
    tagent publish sensors.reading '{"sensor": "boiler-1", "value": 97.2}'
    tagent runs                                        # a run of sensor_monitor per reading
    tagent subscribe sensors.alert                     # alerts as they come
    tagent unregister sensor_monitor                   # stops it

Change first: the topic in `triggers=` (what your sensors or other pipelines publish), the
threshold rule in `check`, and where `alert` sends alerts (`ctx.send` to a pipeline's mailbox).
"""

from pydantic import BaseModel, Field

from tagent_client import Pipeline, when

TOPIC = "sensors.reading"


class IncidentNote(BaseModel):
    summary: str = Field(description="What happened, in one sentence")
    likely_cause: str
    next_action: str


sensor_monitor = Pipeline(
    "sensor_monitor",
    description="Check each published sensor reading against a threshold",
    triggers=[TOPIC],
    capabilities=["monitoring"],
    params={"threshold": 80.0, "space": "monitoring", "keep": 50, "reading": {"sensor": "boiler-1", "value": 91.5}},
)


@sensor_monitor.task(final=True)
async def check(ctx, threshold: float, space: str, keep: int, reading: dict) -> dict:
    """The reading (the triggering event's data, else the `reading` param) against the threshold and the history."""
    data = ctx.trigger["data"] if ctx.trigger else reading
    if not (isinstance(data, dict) and isinstance(data.get("sensor"), str) and isinstance(data.get("value"), (int, float))):
        raise ValueError(f'a reading is {{"sensor": NAME, "value": NUMBER}}, got {data!r}')
    sensor, value = data["sensor"], float(data["value"])
    reading_id = ctx.trigger["id"] if ctx.trigger else ctx.run_id
    history = ctx.space(space)
    while True:  # compare-and-set: concurrent runs for the same sensor each add their reading
        entry = await history.get(sensor)
        kept = list(entry.value) if entry else []
        if any(r["id"] == reading_id for r in kept):
            break  # added by an attempt of this run before a crash: once is enough
        kept = [*kept, {"id": reading_id, "value": value}][-keep:]
        if await history.cas(sensor, kept, expected_version=entry.version if entry else 0):
            break
    values = [r["value"] for r in kept]
    average = round(sum(values) / len(values), 2)
    status = "alert" if value > threshold else "ok"
    ctx.log.info("%s: %.2f (%s; average of %d: %.2f)", sensor, value, status, len(values), average)
    return {"sensor": sensor, "value": value, "threshold": threshold, "status": status, "average": average,
            "readings": len(values)}


@sensor_monitor.task(depends_on=["check"], condition=when("check.status") == "alert")
async def alert(ctx, check: dict, space: str) -> dict:
    """Announce the alert: an event on sensors.alert, and the latest alert in the space."""
    alert = {**check, "run": ctx.run_id}
    await ctx.publish("sensors.alert", alert)
    await ctx.space(space).put(f"{check['sensor']}/alert", alert)
    return alert


sensor_monitor.step(
    "incident_note",
    goal="Write a short incident note about the alert: what happened, the likely cause, the next action",
    depends_on=["alert"],
    constraints=["Compare the value with the threshold and the average", "Three sentences at most"],
    output_schema=IncidentNote,
)
