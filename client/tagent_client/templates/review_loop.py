"""Draft a text, then loop on human review through a shared space until it is approved, and publish it.

    draft (agent) -> review (Python: waits for a person's decision, round after round)
                  -> publish (Python, only when approved: the final text in the space)

`review` writes the request to the shared space `space` (default "reviews") under the key
`document` (default "announcement"): the draft, the round, and how to answer. A person answers
by writing the decision under `<document>/decision`, from the command line or any client:

    tagent space get reviews announcement                        # read the draft
    tagent space put reviews announcement/decision '{"approved": true, "by": "ana"}'
    tagent space put reviews announcement/decision '{"approved": false, "comments": "shorter", "body": "New text"}'
    tagent space put reviews announcement/decision '{"approved": false, "comments": "not now"}'  # rejects it

A decision with a revised `body` (and not approved) starts the next round with that text; one
without a body rejects the draft. Only a decision written after the request counts (an old one is
never taken for a new answer). After `max_rounds` rounds, or `timeout` seconds without a decision,
the draft is not approved; `publish` is then skipped and the run still completes. The loop survives
a crash of the daemon or its worker: it goes on with the round it was in (see `review`).

Params (`--param NAME=VALUE`; the defaults are the `params=` of the Pipeline below):
    brief       what to write                                        default "Announce the new offline mode ..."
    space       the shared space for requests and decisions          default "reviews"
    document    the key of this review in the space                  default "announcement"
    timeout     seconds to wait for all decisions                    default 3600
    max_rounds  review rounds at most                                default 3

Run it (the agent step uses the run's model; `test` runs offline, without an API key):
    tagent submit review_loop.py --model test          # prints the run id; the run waits for review
    tagent space put reviews announcement/decision '{"approved": true, "by": "me"}'
    tagent result RUN

Change first: `brief` and the `draft` goal; a unique `document` per review if several run at once;
and who may decide: `tagent space allow reviews review_loop` limits the space to this pipeline's
steps (clients, you included, can always write).
"""

import time

from pydantic import BaseModel, Field

from tagent_client import Pipeline, when

POLL = 2.0  # seconds between looks at the space, besides the change events


class Draft(BaseModel):
    title: str
    body: str = Field(description="The text, ready to publish")


review_loop = Pipeline(
    "review_loop",
    description="Draft a text and publish it once a person approves it",
    params={"brief": "Announce the new offline mode of the mobile app to our customers", "space": "reviews",
            "document": "announcement", "timeout": 3600, "max_rounds": 3},
)

review_loop.step(
    "draft",
    goal="Write the text params.brief asks for",
    constraints=["Plain language", "At most 120 words"],
    output_schema=Draft,
)


async def decision_after(ctx, space: str, key: str, version: int, deadline: float) -> dict | None:
    """The first decision written under `key` after `version`, or None at the deadline."""
    decisions = ctx.space(space)
    while True:
        entry = await decisions.get(key)
        if entry is not None and entry.version > version:
            return entry.value if isinstance(entry.value, dict) else {"approved": False, "comments": str(entry.value)}
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        await ctx.wait_for_event(f"space.{space}.{key}", timeout=min(left, POLL))


@review_loop.task(depends_on=["draft"])
async def review(ctx, draft: Draft, space: str, document: str, timeout: float, max_rounds: int) -> dict:
    """Rounds of review: request, wait for the decision, take a revised body into the next round.

    Where it stands (round, text, decisions) is kept in the run's durable memory after each decision, and
    each request records the decision version it waits to see exceeded: a step that runs again after a
    crash goes on with the round it was in, and a decision written meanwhile still counts.
    """
    requests, key = ctx.space(space), f"{document}/decision"
    deadline = time.monotonic() + timeout
    progress = await ctx.memory.get("review") or {"round": 1, "body": draft.body, "decisions": []}
    body, decisions, first = progress["body"], progress["decisions"], progress["round"]
    outcome = {"approved": False, "reason": f"not approved after {max_rounds} rounds"}
    for round_ in range(first, max_rounds + 1):
        asked = await requests.get(document)
        if asked is not None and asked.value.get("run") == ctx.run_id and asked.value.get("round") == round_:
            after = asked.value["after"]  # asked already, before a crash: the same question
        else:
            seen = await requests.get(key)
            after = seen.version if seen else 0
            await requests.put(document, {
                "status": "waiting", "round": round_, "run": ctx.run_id, "after": after, "title": draft.title,
                "body": body, "answer": f"tagent space put {space} {key} '{{\"approved\": true}}' "
                                        f"(or false, with comments and a revised body)"})
        ctx.progress((round_ - 1) / max_rounds, f"round {round_}: waiting for a decision on {space}/{key}")
        decision = await decision_after(ctx, space, key, after, deadline)
        if decision is None:
            outcome = {"approved": False, "reason": f"no decision within {timeout:g} s"}
            break
        decisions.append({"round": round_, **decision})
        if decision.get("approved") is True:
            body = decision.get("body") or body
            outcome = {"approved": True, "reason": f"approved by {decision.get('by', 'a reviewer')}"}
            break
        if not decision.get("body"):
            outcome = {"approved": False, "reason": f"rejected: {decision.get('comments', 'no comments')}"}
            break
        body = decision["body"]
        await ctx.memory.save("review", {"round": round_ + 1, "body": body, "decisions": decisions})
    await requests.put(document, {"status": "approved" if outcome["approved"] else "closed", "reason": outcome["reason"],
                                  "run": ctx.run_id, "title": draft.title, "body": body})
    ctx.log.info("review of %s: %s", document, outcome["reason"])
    return {**outcome, "title": draft.title, "body": body, "rounds": decisions}


@review_loop.task(depends_on=["review"], condition=when("review.approved") == True, final=True)  # noqa: E712
async def publish(ctx, review: dict, space: str, document: str) -> dict:
    """The approved text, under `<document>/published` in the space."""
    published = {"title": review["title"], "body": review["body"], "run": ctx.run_id}
    await ctx.space(space).put(f"{document}/published", published)
    return published
