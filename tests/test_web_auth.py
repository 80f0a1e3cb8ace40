"""The dashboard's gate, in process (Starlette's TestClient; no daemon): every request needs the token, a login
sets a strict cookie, a change needs the token in a header and a same-origin request, every answer carries the
security headers. The token file is made once, private, and kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tagent_client.errors import ConfigError
from tagentd.web.auth import CSP, TokenGate, cookie_name, load_token

PORT = 8123
TOKEN = "t" * 43


def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{request.method} {request.url.path} ok")


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    inner = Starlette(routes=[Route("/{path:path}", _ok, methods=["GET", "POST"])])
    gate = TokenGate(inner, TOKEN, tmp_path / "web-token", PORT)
    return TestClient(gate, base_url=f"http://127.0.0.1:{PORT}", follow_redirects=False)


@pytest.mark.parametrize("path", ["/", "/api/runs", "/api/stream", "/metrics", "/static/app.js"])
def test_every_path_refuses_a_request_without_the_token(client: TestClient, path: str) -> None:
    """Given no token, When anything is asked, Then 401 with how to get in (and the security headers)."""
    response = client.get(path)
    assert response.status_code == 401
    assert "tagent ui" in response.text
    assert response.headers["content-security-policy"] == CSP


def test_a_wrong_token_is_refused(client: TestClient) -> None:
    assert client.get("/", params={"token": "nope"}).status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_login_sets_a_strict_httponly_cookie_and_strips_the_token(client: TestClient) -> None:
    """Given the login address, When it is opened, Then a redirect to the address without the token (other
    parameters kept) sets the cookie, HttpOnly and SameSite=Strict, and the cookie alone is enough to read."""
    response = client.get("/", params={"token": TOKEN, "x": "1"})
    assert response.status_code == 303
    assert response.headers["location"] == "/?x=1"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{cookie_name(PORT)}={TOKEN}")
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    page = client.get("/")  # the TestClient keeps the cookie
    assert page.status_code == 200 and page.text == "GET / ok"
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["referrer-policy"] == "no-referrer"


def test_a_login_never_redirects_off_the_dashboard(tmp_path: Path) -> None:
    """Given a login whose path starts with "//", Then the redirect stays on this host (no "//host" Location)."""
    gate = TokenGate(Starlette(), TOKEN, tmp_path / "web-token", PORT)
    scope = {"type": "http", "method": "GET", "path": "//evil.example/x", "query_string": f"token={TOKEN}".encode(),
             "headers": []}
    response = gate.check(scope)
    assert response is not None and response.headers["location"] == "/evil.example/x"


def test_an_api_call_may_send_a_bearer_token(client: TestClient) -> None:
    assert client.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}).text == "GET /api/runs ok"


def test_a_change_needs_the_token_in_a_header_not_only_the_cookie(client: TestClient) -> None:
    """Given a logged-in browser (the cookie), When a POST comes without the header (what a foreign page's form
    could send), Then 401; with the header it goes through."""
    client.get("/", params={"token": TOKEN})
    assert client.post("/api/runs/r1/cancel").status_code == 401
    assert client.post("/api/runs/r1/cancel", headers={"X-Tagent-Token": TOKEN}).text == "POST /api/runs/r1/cancel ok"
    assert client.post("/api/runs/r1/cancel", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_change_from_another_origin_is_refused(client: TestClient) -> None:
    headers = {"X-Tagent-Token": TOKEN}
    foreign = client.post("/api/runs/r1/cancel", headers={**headers, "Origin": "http://evil.example"})
    assert foreign.status_code == 403
    same = client.post("/api/runs/r1/cancel", headers={**headers, "Origin": f"http://127.0.0.1:{PORT}"})
    assert same.status_code == 200


def test_the_token_file_is_made_once_private_and_kept(tmp_path: Path) -> None:
    """Given no token file, When the token is loaded twice, Then one 0600 file holds one token, the same both
    times; a token file others may read is refused with a one-line fix."""
    token, path = load_token(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40
    assert load_token(tmp_path) == (token, path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_token(tmp_path)
