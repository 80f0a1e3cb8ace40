"""Research a topic from several sources, and write it up only if they pass a validation gate.

    web_sources, expert_view (agents) and local_notes (Python: your notes file), concurrently
    -> cross_check (Python: a VALIDATION gate) -> synthesis (agent) -> brief (Python)

`cross_check` is the gate: it counts the sources that produced claims and merges their claims;
the run goes on to `synthesis` only if at least `min_sources` sources contributed. Otherwise
`synthesis` and `brief` are skipped with "validation gate 'cross_check' did not pass", the run
still completes, and `cross_check`'s output says which sources were missing.

Params (`--param NAME=VALUE`; the defaults are the `params=` of the Pipeline below):
    topic        what to research                                     default "heat pumps"
    notes        a Markdown file of your own notes ("- " bullets are claims);
                 relative to this file's folder                       default "samples/notes.md"
    min_sources  sources that must contribute claims                  default 2

Run it (agent steps use the run's model; `test` runs offline, without an API key):
    tagent submit multi_source_research.py --model test --follow
    tagent submit multi_source_research.py --param min_sources=4 --model test --follow   # the gate stops it

Change first: give `web_sources` a search tool and `expert_view` the sources you trust, and
decide what the gate must check (agreement between sources, recency, a minimum of claims).
"""

import re
from pathlib import Path

from pydantic import BaseModel, Field

from tagent_client import DependencyType, ExecutionMode, Pipeline

HERE = Path(__file__).resolve().parent
SOURCES = ("web_sources", "expert_view", "local_notes")


class Findings(BaseModel):
    claims: list[str] = Field(description="Each claim one sentence, as stated by the source")
    sources: list[str] = Field(description="Where the claims come from")


class Synthesis(BaseModel):
    answer: str = Field(description="What the sources agree on, in one paragraph")
    disagreements: list[str]
    open_questions: list[str]


research = Pipeline(
    "multi_source_research",
    description="Research a topic from several sources behind a validation gate",
    params={"topic": "heat pumps", "notes": "samples/notes.md", "min_sources": 2},
)

research.step(
    "web_sources",
    goal="Collect claims about params.topic from reputable web sources",
    execution_mode=ExecutionMode.CONCURRENT,
    output_schema=Findings,
).step(
    "expert_view",
    goal="Collect claims about params.topic from expert and academic sources",
    execution_mode=ExecutionMode.CONCURRENT,
    output_schema=Findings,
)


@research.task(execution_mode=ExecutionMode.CONCURRENT, output_schema=Findings)
def local_notes(ctx, notes: str) -> Findings:
    """The bullet points of the notes file, as claims."""
    path = Path(notes).expanduser() if Path(notes).expanduser().is_absolute() else HERE / notes
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"notes {path}: {exc.strerror}; pass --param notes=FILE") from None
    claims = [m.strip() for m in re.findall(r"^\s*[-*]\s+(.+)$", text, flags=re.MULTILINE)]
    return Findings(claims=claims, sources=[path.name])


@research.task(depends_on=list(SOURCES))
def cross_check(ctx, min_sources: int, web_sources: Findings, expert_view: Findings, local_notes: Findings) -> dict:
    """The gate: valid when at least min_sources sources contributed claims; the claims merged, without repeats."""
    found = {"web_sources": web_sources, "expert_view": expert_view, "local_notes": local_notes}
    contributed = [name for name, f in found.items() if any(c.strip() for c in f.claims)]
    claims = list(dict.fromkeys(c.strip() for f in found.values() for c in f.claims if c.strip()))
    valid = len(contributed) >= min_sources
    reason = (f"{len(contributed)} of {len(found)} sources contributed claims ({', '.join(contributed) or 'none'}); "
              f"{min_sources} needed")
    ctx.log.info("gate %s: %s", "passed" if valid else "failed", reason)
    return {"valid": valid, "reason": reason, "contributed": contributed, "claims": claims}


research.step(
    "synthesis",
    goal="Write what the sources in cross_check.claims agree and disagree on about params.topic",
    depends_on={"cross_check": DependencyType.VALIDATION},
    constraints=["Use only the claims given", "Name disagreements instead of resolving them"],
    output_schema=Synthesis,
)


@research.task(depends_on=["cross_check", "synthesis"], final=True)
def brief(ctx, topic: str, cross_check: dict, synthesis: Synthesis) -> dict:
    """The write-up as Markdown: the synthesis, then every claim it rests on (no model involved)."""
    lines = [f"# {topic}", "", synthesis.answer, "", f"Sources: {', '.join(cross_check['contributed'])}.", "",
             "## Claims", *[f"- {c}" for c in cross_check["claims"]]]
    if synthesis.disagreements:
        lines += ["", "## Disagreements", *[f"- {d}" for d in synthesis.disagreements]]
    return {"topic": topic, "claims": len(cross_check["claims"]), "markdown": "\n".join(lines)}
