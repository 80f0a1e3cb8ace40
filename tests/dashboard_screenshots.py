"""Screenshots of the dashboard for docs/images/, taken from a real daemon and a real run in headless Chromium.

    .venv/bin/python tests/dashboard_screenshots.py [OUT_DIR]     # default: docs/images

It starts a daemon with --web in a temp dir, runs a research pipeline whose steps end in every state (completed,
retried, failed, skipped, running, pending), fills the broker (a mailbox with waiting messages, events at a steady
rate, a shared space written and read by the steps, a pipeline registered for a topic), and saves the run page
(dashboard-run.png) and the broker page (dashboard-broker.png). Nothing is fetched from the internet.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conftest import DaemonProcess, wait_until, write_pipeline  # noqa: E402
from dashboard import login_url, web_info  # noqa: E402
from test_web_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

RESEARCH = '''
import time

from tagent_client import Pipeline

pipeline = Pipeline("company_research")

@pipeline.task()
async def plan_research(ctx):
    ctx.log.info("researching ACME Corp: news, filings, social")
    await ctx.space("research").put("acme/plan", {"sources": ["news", "filings", "social"]})
    return {"company": "ACME Corp", "sources": 3}

@pipeline.task(depends_on=["plan_research"])
async def fetch_news(ctx):
    time.sleep(0.6)  # ok-sleep: the step's own work
    ctx.log.info("12 articles since Monday")
    await ctx.space("research").put("acme/news", {"articles": 12})
    return {"articles": 12, "top": "ACME opens a plant in Lyon"}

@pipeline.task(depends_on=["plan_research"], max_retries=2, retry_delay=0.3)
async def fetch_filings(ctx):
    time.sleep(0.3)  # ok-sleep: the step's own work
    if ctx.attempt == 1:
        raise ConnectionError("the company registry timed out after 30 s")
    ctx.log.info("4 filings, latest 10-Q of 2026-10-28")
    await ctx.space("research").put("acme/filings", {"filings": 4})
    return {"filings": 4}

@pipeline.task(depends_on=["plan_research"], max_retries=0)
def fetch_social(ctx):
    time.sleep(0.2)  # ok-sleep: the step's own work
    raise PermissionError("the social feed refused the API key (revoked on 2026-11-20)")

@pipeline.task(depends_on=["fetch_social"])
def sentiment(ctx):
    return "positive"

@pipeline.task(depends_on=["fetch_news", "fetch_filings"])
async def analyse(ctx):
    await ctx.space("research").get("acme/news")
    await ctx.space("research").get("acme/filings")
    ctx.log.info("waiting for the analyst's notes")
    note = await ctx.receive(timeout=120)
    return {"note": note.payload}

@pipeline.task(depends_on=["analyse"])
def write_report(ctx):
    return "report"

@pipeline.task(depends_on=["write_report"], final=True)
def publish(ctx):
    return "published"
'''

REPORTER = '''
from tagent_client import Pipeline

pipeline = Pipeline("weekly_digest", triggers=["research.company_done"], capabilities=["digest"])

@pipeline.task(final=True)
def digest(ctx):
    return ctx.trigger
'''


def publish_steadily(web: DaemonProcess, stop: threading.Event) -> None:
    """Events at a steady rate, so the broker page has topics with rates to show."""
    with web.client() as client:
        n = 0
        while not stop.is_set():
            n += 1
            batch = [("market.prices.acme", {"price": 101 + n % 7})] * 3 + [("news.acme", {"n": n})]
            if n % 4 == 0:
                batch.append(("alerts.supply", {"level": "low"}))
            client.publish_many(batch)
            stop.wait(0.25)


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tagentd-shots-") as tmp:
        root = Path(tmp)
        root.chmod(0o700)
        web = DaemonProcess(root, workers=2, extra=["--web"]).start()
        stop = threading.Event()
        try:
            info = web_info(web)
            with web.client() as client:
                client.submit(write_pipeline(root, "weekly_digest.py", REPORTER))
                for n in range(3):
                    client.send("reviewer", {"review": f"draft {n + 1}"})
                run_id = client.submit(write_pipeline(root, "company_research.py", RESEARCH)).id
                wait_until(lambda: client.status(run_id).steps["analyse"].status == "running", 60,
                           what="the analysis to wait for its notes")
                wait_until(lambda: client.status(run_id).steps["sentiment"].status == "skipped", 30,
                           what="the sentiment step to be skipped")
            feeder = threading.Thread(target=publish_steadily, args=(web, stop), daemon=True)
            feeder.start()
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1440, "height": 1200}, device_scale_factor=1)
                page.goto(login_url(info))
                page.goto(f"{info['url']}#/runs/{run_id}/steps/fetch_filings")
                page.wait_for_selector(".step-detail[data-step='fetch_filings'] pre.logs")
                page.wait_for_selector(".dag-box g.step[data-step='analyse'][data-state='running']")
                page.screenshot(path=str(out / "dashboard-run.png"), full_page=True)
                page.set_viewport_size({"width": 1440, "height": 760})  # the page is shorter: no empty band
                page.goto(f"{info['url']}#/broker")
                page.wait_for_selector("text=Access log")
                time.sleep(5)  # ok-sleep: let the topic rates gather five seconds of events
                page.goto(f"{info['url']}#/broker")
                page.wait_for_selector("text=Access log")
                page.wait_for_selector("text=market.prices.acme")
                page.screenshot(path=str(out / "dashboard-broker.png"), full_page=True)
                browser.close()
        finally:
            stop.set()
            web.stop()
    print(f"saved {out / 'dashboard-run.png'} and {out / 'dashboard-broker.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "docs" / "images")
