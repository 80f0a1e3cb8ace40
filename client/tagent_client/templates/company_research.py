"""Research a company: facts, reputation and social presence, then a scored brief.

The design documents' company research pipeline ("Example 1"), with typed outputs and a
Python step that scores the findings and writes the brief:

    web_search -> (reclame_aqui_check, social_media_analysis) concurrently -> final_report
               -> brief (Python: a score from the findings, and the brief as Markdown)

Params (`--param NAME=VALUE`; the defaults are the `params=` of the Pipeline below):
    company   the company to research                  default "Acme Corp"
    audience  who the report is written for            default "investment committee"

Run it (agent steps use the run's model; `test` runs offline, without an API key):
    tagent submit company_research.py --model test --follow
    tagent submit company_research.py --param company=Initech --model openai:gpt-4o-mini --follow
    python -c 'from tagent_client import Pipeline, run_agent
    print(run_agent(Pipeline.load("company_research.py"), model="test").final_output["markdown"])'

Change first: give `web_search` a real search tool (`tools=[...]`, docs/agents.md), and
set `model=` on the Pipeline once you have chosen one.
"""

from pydantic import BaseModel, Field

from tagent_client import ExecutionMode, Pipeline


class CompanyInfo(BaseModel):
    name: str = Field(description="The company's legal name")
    industry: str
    founded: int = Field(description="Year founded")
    website: str


class Reputation(BaseModel):
    score: float = Field(description="0 (terrible) to 5 (excellent), from complaint sites and reviews")
    complaints_answered: float = Field(description="Share of complaints answered, 0 to 1")
    patterns: list[str] = Field(description="Recurring complaint topics")


class SocialPresence(BaseModel):
    followers: int
    sentiment: str = Field(description="positive, neutral or negative")
    highlights: list[str]


class Report(BaseModel):
    summary: str = Field(description="Executive summary, three sentences at most")
    strengths: list[str]
    risks: list[str]


company_research = Pipeline(
    "company_research",
    description="Comprehensive company analysis pipeline",
    global_constraints=["Cite only facts you are confident about", "Be concise"],
    params={"company": "Acme Corp", "audience": "investment committee"},
)

company_research.step(
    name="web_search",
    goal="Search for basic information about the company named in params.company",
    constraints=["Use only reliable sources", "Gather recent information"],
    output_schema=CompanyInfo,
    timeout=120,
    max_retries=2,
).step(
    name="reclame_aqui_check",
    goal="Check the company's reputation on Reclame Aqui and similar complaint sites",
    depends_on=["web_search"],
    execution_mode=ExecutionMode.CONCURRENT,
    constraints=["Focus on complaint patterns", "Get satisfaction ratings"],
    output_schema=Reputation,
).step(
    name="social_media_analysis",
    goal="Analyze the company's Instagram and social media presence",
    depends_on=["web_search"],
    execution_mode=ExecutionMode.CONCURRENT,
    output_schema=SocialPresence,
).step(
    name="final_report",
    goal="Create a comprehensive report for params.audience combining all findings",
    depends_on=["web_search", "reclame_aqui_check", "social_media_analysis"],
    constraints=["Professional format", "Include executive summary"],
    output_schema=Report,
)


def overall_score(reputation: Reputation, social: SocialPresence) -> float:
    """0-5: reputation counts most, answered complaints and reach add to it, negative sentiment takes away."""
    reach = min(1.0, social.followers / 100_000)
    mood = {"positive": 0.5, "neutral": 0.0, "negative": -0.5}.get(social.sentiment.lower(), 0.0)
    score = 0.7 * reputation.score + 0.8 * reputation.complaints_answered + 0.7 * reach + mood
    return round(max(0.0, min(5.0, score)), 2)


@company_research.task(depends_on=["web_search", "reclame_aqui_check", "social_media_analysis", "final_report"],
                       final=True)
def brief(ctx, company: str, audience: str, web_search: CompanyInfo, reclame_aqui_check: Reputation,
          social_media_analysis: SocialPresence, final_report: Report) -> dict:
    """The brief: a score computed from the findings (no model involved) and the report as Markdown."""
    score = overall_score(reclame_aqui_check, social_media_analysis)
    verdict = "strong" if score >= 3.5 else "mixed" if score >= 2 else "weak"
    lines = [
        f"# {company}: research brief for the {audience}",
        "",
        f"Overall score {score} / 5 ({verdict}).",
        "",
        final_report.summary,
        "",
        f"- Industry: {web_search.industry}; founded {web_search.founded}; {web_search.website}",
        f"- Reputation: {reclame_aqui_check.score} / 5, {reclame_aqui_check.complaints_answered:.0%} of complaints answered",
        f"- Social: {social_media_analysis.followers:,} followers, {social_media_analysis.sentiment} sentiment",
        "",
        "## Strengths",
        *[f"- {item}" for item in final_report.strengths or ["(none found)"]],
        "",
        "## Risks",
        *[f"- {item}" for item in [*final_report.risks, *reclame_aqui_check.patterns] or ["(none found)"]],
    ]
    ctx.log.info("scored %s: %.2f (%s)", company, score, verdict)
    return {"company": company, "score": score, "verdict": verdict, "markdown": "\n".join(lines)}
