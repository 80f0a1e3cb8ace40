# From the design document "TAgent Pipeline Architecture", "Pipeline Usage Examples", "Example 2: E-commerce Analysis
# Pipeline": the sample verbatim, with only the import line added (tagent_client for tagent). The sample
# defines the pipeline only; tests/test_design_samples.py runs it (TAGENT_MODEL=test) in-process and through
# the daemon.
from tagent_client import ExecutionMode, Pipeline

# Complex pipeline with conditional execution
ecommerce_pipeline = Pipeline("ecommerce_analysis")

ecommerce_pipeline.step(
    name="product_search",
    goal="Find product information and pricing",
    tools_filter=["web_search", "price_comparison"]
).step(
    name="competitor_analysis",
    goal="Analyze competitor pricing and features",
    depends_on=["product_search"],
    execution_mode=ExecutionMode.CONCURRENT
).step(
    name="review_analysis", 
    goal="Analyze customer reviews and ratings",
    depends_on=["product_search"],
    execution_mode=ExecutionMode.CONCURRENT
).step(
    name="market_validation",
    goal="Validate market demand and trends",
    depends_on=["competitor_analysis", "review_analysis"],
    execution_mode=ExecutionMode.CONDITIONAL,
    constraints=["Only if competitor analysis shows market gap"]
).step(
    name="business_report",
    goal="Generate business intelligence report",
    depends_on=["competitor_analysis", "review_analysis", "market_validation"],
    constraints=["Include ROI projections", "Market entry recommendations"]
)
