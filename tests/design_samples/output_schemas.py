# From the design document "TAgent Pipeline Architecture", "Structured Output Schemas and Results", "Usage Example":
# the sample verbatim, with only the import lines added (tagent_client for tagent). Run with TAGENT_MODEL=test
# in the environment; tests/test_design_samples.py runs it in-process and through the daemon.
from typing import List

from pydantic import BaseModel

from tagent_client import Pipeline, run_agent


# Define custom output schemas
class CompanyInfo(BaseModel):
    name: str
    industry: str
    reputation_score: float

class ReputationAnalysis(BaseModel):
    overall_score: float
    complaints: int
    satisfaction: float

class CompanyReport(BaseModel):
    company: CompanyInfo
    reputation: ReputationAnalysis
    recommendations: List[str]

# Create pipeline with schemas
pipeline = Pipeline("company_research")
pipeline.step(
    name="basic_info",
    goal="Gather company information",
    output_schema=CompanyInfo
).step(
    name="reputation_check",
    goal="Analyze reputation",
    depends_on=["basic_info"],
    output_schema=ReputationAnalysis
).step(
    name="final_report",
    goal="Create final report",
    depends_on=["basic_info", "reputation_check"],
    output_schema=CompanyReport
)

# Execute and access structured results
result = run_agent(pipeline)
company_info = result.step_outputs['basic_info']  # CompanyInfo object
reputation = result.step_outputs['reputation_check']  # ReputationAnalysis object
final_report = result.final_output  # CompanyReport object (if final_report is last step)
