"""Company research — the offline example pipeline.

web_search -> (reputation, social) concurrently -> score (a Python step) -> final_report

Every agent step runs on pydantic-ai's `test` model, so this needs no network and
no API key: the outputs are schema-valid placeholders. Point it at a real model
with `tagent submit research.py --model openai:gpt-4o-mini` after removing
`model="test"` below (a step's or pipeline's own model wins over --model).

    tagent submit pipelines/examples/research.py --param company=Acme --follow
"""

from pydantic import BaseModel, Field

from tagent_client import ExecutionMode, Pipeline


class CompanyInfo(BaseModel):
    name: str = Field(description="The company's legal name")
    industry: str
    founded: int = Field(description="Year founded")
    website: str


class Reputation(BaseModel):
    score: float = Field(description="0 (terrible) to 5 (excellent)")
    strengths: list[str]
    concerns: list[str]


class SocialPresence(BaseModel):
    followers: int
    sentiment: str = Field(description="positive, neutral or negative")


class Scorecard(BaseModel):
    company: str
    overall: float
    verdict: str


class Report(BaseModel):
    title: str
    summary: str
    recommendation: str


pipeline = Pipeline(
    "company_research",
    description="Research a company and write a short report",
    model="test",
    global_constraints=["Cite only facts you are confident about", "Be concise"],
    shared_context={"audience": "investment committee"},
)

pipeline.step(
    "web_search",
    goal="Find basic facts about the company named in params.company",
    output_schema=CompanyInfo,
    constraints=["Prefer official sources"],
    timeout=60,
    max_retries=2,
)
pipeline.step(
    "reputation",
    goal="Assess the company's reputation from reviews and news",
    depends_on=["web_search"],
    execution_mode=ExecutionMode.CONCURRENT,
    output_schema=Reputation,
)
pipeline.step(
    "social",
    goal="Analyse the company's social media presence",
    depends_on=["web_search"],
    execution_mode=ExecutionMode.CONCURRENT,
    output_schema=SocialPresence,
)


@pipeline.task(depends_on=["web_search", "reputation", "social"], output_schema=Scorecard)
def score(ctx, web_search: CompanyInfo, reputation: Reputation, social: SocialPresence) -> Scorecard:
    """Combine the findings into one number (plain Python: no model involved)."""
    reach = min(1.0, social.followers / 100_000)
    overall = round(0.8 * reputation.score + 1.0 * reach, 2)
    ctx.log.info("scored %s: %.2f", web_search.name, overall)
    verdict = "strong" if overall >= 3.5 else "mixed" if overall >= 2 else "weak"
    return Scorecard(company=ctx.params.get("company", web_search.name), overall=overall, verdict=verdict)


pipeline.step(
    "final_report",
    goal="Write a short report for the audience in shared.audience",
    depends_on=["web_search", "reputation", "social", "score"],
    output_schema=Report,
    final=True,
)
