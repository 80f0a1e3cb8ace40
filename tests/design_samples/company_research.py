# From the design document "TAgent Pipeline Architecture", "Pipeline Usage Examples", "Example 1: Company Research
# Pipeline": the sample verbatim, with only the import line added (tagent_client for tagent). Run with
# TAGENT_MODEL=test in the environment; tests/test_design_samples.py runs it in-process and through the daemon.
from tagent_client import ExecutionMode, Pipeline, run_agent

# Define the research pipeline
company_research = Pipeline(
    name="company_research",
    description="Comprehensive company analysis pipeline"
)

# Add steps with dependencies
company_research.step(
    name="web_search",
    goal="Search for basic company information online",
    constraints=["Use only reliable sources", "Gather recent information"]
).step(
    name="reclame_aqui_check", 
    goal="Check company reputation on Reclame Aqui",
    depends_on=["web_search"],  # Needs company name from web search
    constraints=["Focus on complaint patterns", "Get satisfaction ratings"]
).step(
    name="social_media_analysis",
    goal="Analyze company's Instagram and social media presence", 
    depends_on=["web_search"],
    execution_mode=ExecutionMode.CONCURRENT  # Can run parallel with reclame_aqui
).step(
    name="final_report",
    goal="Create comprehensive report combining all findings",
    depends_on=["reclame_aqui_check", "social_media_analysis"],
    constraints=["Professional format", "Include executive summary"]
)

# Execute pipeline
result = run_agent(Pipeline(company_research))
