"""Analyse a product's market from a catalog of offers; validate and report only where there is a gap.

The design documents' e-commerce analysis pipeline ("Example 2"), on a local catalog of offers
(a JSON file: products, each with offers by shop, price, rating and review count):

    product_search (agent; tools web_search, price_comparison) and price_stats (Python) ->
    (competitor_analysis, review_analysis) concurrently ->
    market_validation (only when price_stats finds a market gap) -> business_report -> summary (Python)

A market gap is computed, not guessed: few sellers, or prices spread wider than `gap_spread`
(max - min over the median). Without a gap, `market_validation` and what depends on it (the
report and the summary) are skipped, as in the design document, and the run still completes:
`price_stats` holds the figures, and the skip reason says why.

Params (`--param NAME=VALUE`; the defaults are the `params=` of the Pipeline below):
    product     the product to analyse (a name in the catalog)     default "wireless earbuds"
    catalog     the offers file; relative to this file's folder    default "samples/catalog.json"
    gap_spread  price spread that counts as a gap                  default 0.6
    min_sellers fewer sellers than this is a gap                   default 3

Run it (agent steps use the run's model; `test` runs offline, without an API key):
    tagent submit ecommerce_analysis.py --model test --follow
    tagent submit ecommerce_analysis.py --param product="usb-c cable" --model test --follow   # no gap

Change first: point `catalog` at your own offers export (same shape), and replace the two
catalog tools with your shop's search and price APIs.
"""

import json
import statistics
from pathlib import Path

from pydantic import BaseModel, Field

from tagent_client import ExecutionMode, Pipeline, when

HERE = Path(__file__).resolve().parent


class ProductInfo(BaseModel):
    name: str
    category: str
    typical_price: float


class CompetitorView(BaseModel):
    leaders: list[str] = Field(description="Shops that lead on price or quality")
    positioning: str = Field(description="Where a new offer would fit")


class ReviewView(BaseModel):
    praised: list[str]
    criticised: list[str]


class Validation(BaseModel):
    demand: str = Field(description="low, medium or high")
    trend: str


class BusinessReport(BaseModel):
    summary: str
    roi_projection: str
    recommendations: list[str]


def read_catalog(catalog: str) -> dict:
    """The catalog as data; a relative path is taken from this file's folder."""
    path = Path(catalog) if Path(catalog).is_absolute() else HERE / catalog
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FileNotFoundError(f"catalog {path}: {exc.strerror}; pass --param catalog=FILE") from None


def offers_of(catalog: str, product: str) -> list[dict]:
    for entry in read_catalog(catalog)["products"]:
        if entry["name"].lower() == product.lower():
            return entry["offers"]
    return []


# The agent's tools. A tool sees only its arguments, not the run's params: these read the default catalog.
def web_search(query: str) -> str:
    """Search the local catalog for products whose name contains the query."""
    names = [p["name"] for p in read_catalog(ecommerce_pipeline.param_defaults["catalog"])["products"]]
    found = [n for n in names if query.lower() in n.lower()]
    return f"products matching {query!r}: {', '.join(found) or 'none'}"


def price_comparison(product: str) -> str:
    """Every shop's price for the product, cheapest first."""
    offers = sorted(offers_of(ecommerce_pipeline.param_defaults["catalog"], product), key=lambda o: o["price"])
    return "; ".join(f"{o['shop']}: {o['price']:.2f}" for o in offers) or f"no offers for {product!r}"


ecommerce_pipeline = Pipeline(
    "ecommerce_analysis",
    description="Market analysis of one product from a catalog of offers",
    tools=[web_search, price_comparison],
    params={"product": "wireless earbuds", "catalog": "samples/catalog.json", "gap_spread": 0.6, "min_sellers": 3},
)

ecommerce_pipeline.step(
    name="product_search",
    goal="Find product information and pricing for params.product",
    tools_filter=["web_search", "price_comparison"],
    output_schema=ProductInfo,
)


@ecommerce_pipeline.task(execution_mode=ExecutionMode.CONCURRENT)
def price_stats(ctx, product: str, catalog: str, gap_spread: float, min_sellers: int) -> dict:
    """Price and rating statistics of the product's offers, and whether they show a market gap."""
    offers = offers_of(catalog, product)
    if not offers:
        raise ValueError(f"no offers for {product!r} in {catalog}; pass --param product=NAME of a catalog product")
    prices = [o["price"] for o in offers]
    median = statistics.median(prices)
    spread = round((max(prices) - min(prices)) / median, 2)
    reviews = sum(o["reviews"] for o in offers)
    rating = round(sum(o["rating"] * o["reviews"] for o in offers) / reviews, 2)
    reasons = []
    if len(offers) < min_sellers:
        reasons.append(f"only {len(offers)} seller(s)")
    if spread > gap_spread:
        reasons.append(f"prices spread {spread:.0%} around the median")
    ctx.log.info("%s: %d offers, median %.2f, spread %.2f", product, len(offers), median, spread)
    return {"product": product, "sellers": len(offers), "min": min(prices), "median": median, "max": max(prices),
            "spread": spread, "rating": rating, "reviews": reviews, "market_gap": bool(reasons), "gap_reasons": reasons}


ecommerce_pipeline.step(
    name="competitor_analysis",
    goal="Analyze competitor pricing and features",
    depends_on=["product_search", "price_stats"],
    execution_mode=ExecutionMode.CONCURRENT,
    output_schema=CompetitorView,
).step(
    name="review_analysis",
    goal="Analyze customer reviews and ratings",
    depends_on=["product_search", "price_stats"],
    execution_mode=ExecutionMode.CONCURRENT,
    output_schema=ReviewView,
).step(
    name="market_validation",
    goal="Validate market demand and trends",
    depends_on=["competitor_analysis", "review_analysis", "price_stats"],
    execution_mode=ExecutionMode.CONDITIONAL,
    condition=when("price_stats.market_gap") == True,  # noqa: E712 - a condition, compared in the engine
    constraints=["Only if competitor analysis shows market gap"],
    output_schema=Validation,
).step(
    name="business_report",
    goal="Generate business intelligence report",
    depends_on=["competitor_analysis", "review_analysis", "market_validation"],
    constraints=["Include ROI projections", "Market entry recommendations"],
    output_schema=BusinessReport,
)


@ecommerce_pipeline.task(depends_on=["price_stats", "business_report"], final=True)
def summary(ctx, price_stats: dict, business_report: BusinessReport) -> dict:
    """The figures and the verdict in one place (no model involved)."""
    verdict = f"market gap: {', '.join(price_stats['gap_reasons'])}"
    return {"product": price_stats["product"], "verdict": verdict,
            "prices": {k: price_stats[k] for k in ("min", "median", "max")}, "sellers": price_stats["sellers"],
            "rating": price_stats["rating"], "report": business_report.summary,
            "recommendations": business_report.recommendations}
