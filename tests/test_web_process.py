"""The dashboard's process, end to end over real sockets and real HTTP: the daemon starts it with --web,
restarts it when it dies, ends it when it stops (no process left), and every request needs the token.
`tagent ui` and `tagentd status` say where it is."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import DaemonProcess, pid_alive, processes_using, wait_until, write_pipeline
from dashboard import FAILING, GATED, login_url, token, web_info

from tagent_client.errors import exit_code_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def web(make_daemon: Any) -> DaemonProcess:
    return make_daemon(workers=1, extra=["--web"]).start()


def api(info: dict[str, Any]) -> httpx.Client:
    return httpx.Client(base_url=info["url"], headers={"Authorization": f"Bearer {token(info)}"}, timeout=10.0)


def test_tagent_ui_prints_the_login_address_and_status_the_address_without_it(web: DaemonProcess) -> None:
    """Given a daemon started with --web, When `tagent ui` and `tagentd status` run, Then ui prints the address
    with the token from the 0600 token file; status shows the address and never the token."""
    info = web_info(web)
    assert info["url"].startswith("http://127.0.0.1:")
    assert stat.S_IMODE(os.stat(info["token_file"]).st_mode) == 0o600
    ui = web.cli("ui")
    assert ui.returncode == 0, ui.stderr
    assert ui.stdout.strip() == login_url(info)
    status = web.admin("status")
    assert info["url"] in status.stdout and token(info) not in status.stdout
    web_file = json.loads((web.runtime_dir / "web.json").read_text())
    assert web_file["url"] == info["url"] and stat.S_IMODE((web.runtime_dir / "web.json").stat().st_mode) == 0o600


def test_tagent_ui_without_the_dashboard_says_how_to_start_it(make_daemon: Any) -> None:
    daemon = make_daemon(workers=1).start()
    ui = daemon.cli("ui")
    assert ui.returncode == exit_code_for("config")
    assert ui.stderr.strip().splitlines() == [
        "tagent: tagentd runs without the dashboard; start it with 'tagentd start --web' or web = true in tagentd.toml"]


def test_requests_without_the_token_are_refused(web: DaemonProcess) -> None:
    """Given the dashboard, When a page, the API, the stream or an action is asked without the token (or an
    action with the cookie only), Then 401; with the bearer token the API answers."""
    info = web_info(web)
    with httpx.Client(base_url=info["url"], timeout=10.0) as anonymous:
        for path in ("/", "/api/runs", "/api/stream", "/api/daemon", "/static/app.js"):
            assert anonymous.get(path).status_code == 401, path
        assert anonymous.post("/api/runs/x/cancel").status_code == 401
        anonymous.get("/", params={"token": token(info)})  # logs in: the cookie is set
        assert anonymous.get("/api/runs").status_code == 200
        assert anonymous.post("/api/runs/x/cancel").status_code == 401  # the cookie alone changes nothing
    with api(info) as client:
        assert client.get("/api/runs").json() == {"runs": [], "pipelines": []}


def test_the_api_shows_a_failed_run_and_cancels_a_running_one(web: DaemonProcess, tmp_path: Path) -> None:
    """Given a failed run and a running one, When the API is asked, Then the runs list filters, the run has its
    steps' states and its DAG (a node per step), its root failure with the traceback, timing bars, its step's
    logs and output; a POST cancel cancels the other."""
    info = web_info(web)
    with web.client() as daemon, api(info) as client:
        failing = daemon.submit(write_pipeline(tmp_path, "failing.py", FAILING)).id
        wait_until(lambda: daemon.status(failing).status == "failed", 30, what="the run to fail")
        gated = daemon.submit(write_pipeline(tmp_path, "gated.py", GATED)).id
        listed = client.get("/api/runs").json()
        assert [r["run_id"] for r in listed["runs"]] == [gated, failing] and listed["pipelines"] == ["failing", "gated"]
        assert [r["run_id"] for r in client.get("/api/runs", params={"pipeline": "failing"}).json()["runs"]] == [failing]
        assert [r["run_id"] for r in client.get("/api/runs", params={"status": "failed"}).json()["runs"]] == [failing]
        assert [r["run_id"] for r in client.get("/api/runs", params={"q": gated[-5:].upper()}).json()["runs"]] == [gated]
        page = client.get(f"/api/runs/{failing}").json()
        assert page["run"]["status"] == "failed"
        assert [(s["name"], s["status"]) for s in page["steps"]] == [("load", "completed"), ("parse", "failed"),
                                                                      ("report", "skipped")]
        assert all(f'data-step="{name}"' in page["graph"] for name in ("load", "parse", "report"))
        root = page["why"]["failures"][0]
        assert root["step"] == "parse" and "ValueError: bad data in row 7" in root["traceback"]
        assert root["affected"] == ["report"]
        bars = page["gantt"]["bars"]
        assert [(bar["step"], bar["attempt"], bar["outcome"]) for bar in bars] == [("load", 1, "completed"),
                                                                                   ("parse", 1, "failed")]
        step = client.get(f"/api/runs/{failing}/steps/load").json()
        assert [line["message"] for line in step["logs"]] == ["loaded 3 rows"]
        assert step["output"] == json.dumps({"rows": 3}, indent=2)
        assert client.get(f"/api/runs/{failing}/steps/nope").status_code == 404
        cancelled = client.post(f"/api/runs/{gated}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        wait_until(lambda: daemon.status(gated).status == "cancelled", 20, what="the run to be cancelled")


def test_the_stream_delivers_a_new_run_live(web: DaemonProcess, tmp_path: Path) -> None:
    """Given a browser-like client on /api/stream, When a run is submitted, Then its run.started event arrives
    on the stream (Server-Sent Events, one JSON object per `data:` line)."""
    info = web_info(web)
    path = write_pipeline(tmp_path, "gated.py", GATED)
    with web.client() as daemon, api(info) as client, client.stream("GET", "/api/stream",
                                                                    params={"topics": "run."}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        run = daemon.submit(path).id
        for line in lines:
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["topic"] == "resync":
                    continue
                assert event["topic"] == "run.started" and event["data"]["run_id"] == run
                break
        daemon.cancel(run)


def test_the_daemon_restarts_a_killed_dashboard_on_the_same_address(web: DaemonProcess) -> None:
    """Given the dashboard, When its process is killed with SIGKILL, Then the daemon starts another on the same
    address, and it answers with the same token."""
    info = web_info(web)
    os.kill(info["pid"], signal.SIGKILL)
    wait_until(lambda: not pid_alive(info["pid"]), 10, what="the dashboard to die")
    again = wait_until(lambda: (w := web_info(web)) and w["pid"] != info["pid"] and w, 30, what="a new dashboard")
    assert again["url"] == info["url"] and again["restarts"] == 1
    with api(again) as client:
        assert client.get("/api/daemon").json()["pid"] == web.pid


def test_stopping_the_daemon_ends_the_dashboard(web: DaemonProcess, tmp_path: Path) -> None:
    """Given a daemon with its dashboard, When the daemon stops, Then the dashboard's process is gone, its
    web.json removed, and no process of the test is left."""
    info = web_info(web)
    stopped = web.admin("stop", "--timeout", "5")
    assert stopped.returncode == 0, stopped.stderr
    web.proc.wait(timeout=20)
    assert not pid_alive(info["pid"])
    assert not (web.runtime_dir / "web.json").exists()
    wait_until(lambda: not processes_using(tmp_path), 10, what="no process of the test left")


def test_the_dashboard_dies_with_a_killed_daemon(web: DaemonProcess) -> None:
    """Given a daemon with its dashboard, When only the daemon is killed with SIGKILL, Then the dashboard dies
    too (its lifeline), and a new daemon starts a new one."""
    info = web_info(web)
    os.kill(web.pid, signal.SIGKILL)
    web.proc.wait(timeout=10)
    wait_until(lambda: not pid_alive(info["pid"]), 10, what="the dashboard to die with the daemon")
    web.start()
    assert web_info(web)["pid"] != info["pid"]


def test_the_actions_retry_resume_and_rollback_a_finished_run(web: DaemonProcess, tmp_path: Path) -> None:
    """Given a failed run, When the dashboard's actions are posted, Then retry and resume reach the daemon (the
    step runs again: one more attempt), a refused rollback is a 400 with the daemon's one-line reason, and an
    unknown action a 404."""
    info = web_info(web)
    with web.client() as daemon, api(info) as client:
        run = daemon.submit(write_pipeline(tmp_path, "failing.py", FAILING)).id
        wait_until(lambda: daemon.status(run).status == "failed", 30, what="the run to fail")
        retried = client.post(f"/api/runs/{run}/steps/parse/retry")
        assert retried.status_code == 200 and retried.json() == {"run_id": run, "step": "parse"}
        wait_until(lambda: (d := daemon.status(run)).status == "failed" and d.steps["parse"].attempts == 2, 30,
                   what="the retried step to fail again")
        resumed = client.post(f"/api/runs/{run}/resume")
        assert resumed.status_code == 200 and resumed.json()["steps"] == ["parse", "report"]
        wait_until(lambda: (d := daemon.status(run)).status == "failed" and d.steps["parse"].attempts == 3, 30,
                   what="the resumed step to fail again")
        refused = client.post(f"/api/runs/{run}/rollback")
        assert refused.status_code == 400 and "nothing to roll back" in refused.json()["error"]
        assert client.post(f"/api/runs/{run}/nope").status_code == 404


def test_metrics_are_served_to_a_scraper_with_the_token(web: DaemonProcess) -> None:
    """Given the dashboard, When /metrics is scraped with the bearer token, Then the daemon's Prometheus text comes
    back (as `tagentd status --metrics` prints it); without the token, 401."""
    info = web_info(web)
    with httpx.Client(base_url=info["url"], timeout=10.0) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
    with api(info) as client:
        scraped = client.get("/metrics")
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "tagentd_workers" in scraped.text and "# TYPE" in scraped.text
