"""The dashboard in a real headless Chromium (the system's /usr/bin/chromium, driven by Playwright) against a real
daemon started with --web: runs appear live, the DAG's states change live, a traceback is shown, the cancel
button cancels, requests without the token are refused, and the page asks nothing of any host but 127.0.0.1.

Without Chromium these tests are skipped, except under CI (`CI` set), where they fail: .ci/run installs it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import DaemonProcess, wait_until, write_pipeline
from dashboard import FAILING, GATED, login_url, web_info

pytestmark = pytest.mark.timeout(60)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT = 10_000  # ms a page may take to show what a test waits for (a loaded machine; most take < 1 s)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module, in a fresh temporary profile (user-data dir) that `launch` makes and removes;
    each test gets its own context (its own cookies and storage)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install Debian's chromium ('apt-get install -y chromium')"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon with its dashboard for the module."""
    root = tmp_path_factory.mktemp("web")
    root.chmod(0o700)
    daemon = DaemonProcess(root, workers=2, extra=["--web"]).start()
    try:
        web_info(daemon)
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def page(browser: Any, web: DaemonProcess) -> Iterator[Any]:
    """A logged-in page on the dashboard; it records every request it makes and every console error."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT)
    tab = context.new_page()
    tab.requested, tab.errors = [], []
    tab.on("request", lambda request: tab.requested.append(request.url))
    tab.on("console", lambda message: message.type == "error" and tab.errors.append(message.text))
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    tab.goto(login_url(web_info(web)))
    tab.wait_for_selector("#live[data-live=live]")
    yield tab
    context.close()


def submit(web: DaemonProcess, tmp_path: Path, name: str, source: str) -> str:
    """Submit a pipeline with the CLI, as a user would; returns the run id."""
    done = web.cli("submit", str(write_pipeline(tmp_path, name, source)))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_run_submitted_by_the_cli_appears_in_the_list_within_a_second(page: Any, web: DaemonProcess,
                                                                        tmp_path: Path) -> None:
    """Given the runs list open (live), When `tagent submit` starts a run, Then its row shows within 1 s."""
    page.wait_for_selector("main h1:text('Runs')")
    run_id = submit(web, tmp_path, "gated.py", GATED)
    started = time.monotonic()
    page.wait_for_selector(f"tr[data-run='{run_id}']", timeout=1000)
    assert time.monotonic() - started < 1.0
    with web.client() as client:
        client.cancel(run_id)


def test_the_dag_shows_each_steps_state_changing_live(page: Any, web: DaemonProcess, tmp_path: Path) -> None:
    """Given a run whose steps each wait for a message the test sends, When the test releases them one by one,
    Then the run page's DAG shows first running, then completed with second running, then both completed —
    without a reload."""
    run_id = submit(web, tmp_path, "gated.py", GATED)
    page.goto(f"{web_info(web)['url']}#/runs/{run_id}")
    node = ".dag-box g.step[data-step='{}'][data-state='{}']"
    page.wait_for_selector(node.format("first", "running"))
    page.wait_for_selector(node.format("second", "pending"))
    page.evaluate("window.stillTheSamePage = true")
    with web.client() as client:
        client.send("gated", {"n": 1})
        page.wait_for_selector(node.format("first", "completed"))
        page.wait_for_selector(node.format("second", "running"))
        client.send("gated", {"n": 2})
        page.wait_for_selector(node.format("second", "completed"))
        assert client.status(run_id).status == "completed"
    page.wait_for_selector(".page-head .badge[data-state='completed']")
    assert page.evaluate("window.stillTheSamePage") is True
    assert page.locator(".gantt .gbar").count() == 2


def test_a_failed_steps_traceback_is_visible(page: Any, web: DaemonProcess, tmp_path: Path) -> None:
    """Given a run whose step raised, When its page is open, Then the failure analysis names the step first and
    shows its traceback, and selecting the step shows its error, whole traceback and what it logged."""
    run_id = submit(web, tmp_path, "failing.py", FAILING)
    with web.client() as client:
        wait_until(lambda: client.status(run_id).status == "failed", 30, what="the run to fail")
    page.goto(f"{web_info(web)['url']}#/runs/{run_id}")
    assert "ValueError: bad data in row 7" in page.locator(".failure pre.traceback").first.inner_text()
    assert page.locator(".failure h3").first.inner_text() == "1. parse: ValueError"
    page.click(".dag-box g.step[data-step='parse']")
    detail = page.wait_for_selector(".step-detail[data-step='parse']")
    assert 'raise ValueError("bad data in row 7")' in detail.query_selector("pre.traceback").inner_text()
    page.click(".dag-box g.step[data-step='load']")
    page.wait_for_selector(".step-detail[data-step='load'] pre.logs:has-text('loaded 3 rows')")


def test_the_cancel_button_cancels_the_run(page: Any, web: DaemonProcess, tmp_path: Path) -> None:
    """Given a running run's page, When Cancel is clicked, Then the daemon reports the run cancelled and the
    page shows it."""
    run_id = submit(web, tmp_path, "gated.py", GATED)
    page.goto(f"{web_info(web)['url']}#/runs/{run_id}")
    page.wait_for_selector(".dag-box g.step[data-step='first'][data-state='running']")
    page.click("button[data-action='cancel']")
    with web.client() as client:
        wait_until(lambda: client.status(run_id).status == "cancelled", 20, what="the daemon to cancel the run")
    page.wait_for_selector(".page-head .badge[data-state='cancelled']")
    page.wait_for_selector(".notice.ok:text('Cancel: done')")


def test_requests_without_the_token_are_refused(browser: Any, page: Any, web: DaemonProcess) -> None:
    """Given a browser that never logged in, When it opens the dashboard or its API, Then 401; and a logged-in
    page's POST that carries only the cookie (what a forged cross-site request could carry) is refused too."""
    url = web_info(web)["url"]
    stranger = browser.new_context()
    try:
        tab = stranger.new_page()
        assert tab.goto(url).status == 401
        assert tab.goto(f"{url}api/runs").status == 401
        assert tab.goto(f"{url}api/stream").status == 401
    finally:
        stranger.close()
    status = page.evaluate("fetch('/api/runs/any/cancel', {method: 'POST'}).then((r) => r.status)")
    assert status == 401


def test_the_page_asks_nothing_of_any_host_but_127_0_0_1(page: Any, web: DaemonProcess, tmp_path: Path) -> None:
    """Given every page of the dashboard visited, Then each request went to 127.0.0.1 (no CDN, no web font) and the
    browser reported no error (a Content-Security-Policy violation would be one)."""
    run_id = submit(web, tmp_path, "failing.py", FAILING)
    url = web_info(web)["url"]
    with web.client() as client:
        wait_until(lambda: client.status(run_id).status == "failed", 30, what="the run to fail")
        client.space("notes").put("k", {"v": 1})
    for fragment, ready in ((f"#/runs/{run_id}/steps/parse", ".step-detail"), ("#/broker", "table.grid"),
                            ("#/watch", "section.card"), ("#/daemon", "section.card"), ("#/runs", "table.runs")):
        page.goto(url + fragment)
        page.wait_for_selector(ready)
    hosts = {urlsplit(u).hostname for u in page.requested}
    assert hosts == {"127.0.0.1"}, page.requested
    assert page.errors == []

