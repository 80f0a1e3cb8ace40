"""The dashboard's login token and the gate every request passes.

Guarantees:
- the token is made once (`secrets.token_urlsafe`, 256 bits) in `<state dir>/web-token`, mode 0600, and kept
  across restarts; a token file others may read is refused;
- every request needs the token: a `?token=` login sets an HttpOnly, SameSite=Strict cookie (named after the
  port: two dashboards on one host keep theirs apart) and redirects to the same address without it; API calls
  may send `Authorization: Bearer TOKEN` instead. Without it: 401;
- a request that changes something (any method but GET/HEAD) needs the token in a header (`X-Tagent-Token` or
  `Authorization: Bearer`), never the cookie alone, so a foreign page cannot forge one (CSRF), and an `Origin`
  other than the dashboard's own is refused (403);
- every response carries a strict Content-Security-Policy (`default-src 'self'`), no referrer, no framing.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import Headers, QueryParams
from starlette.requests import cookie_parser
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tagent_client.errors import ConfigError
from tagent_client.wire import paths

HEADER = "x-tagent-token"
SAFE_METHODS = ("GET", "HEAD")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
NO_TOKEN = ("401 Unauthorized: this dashboard needs its login token; open the address 'tagent ui' prints "
            "(API calls: send 'Authorization: Bearer TOKEN', the token is in {path})\n")


def load_token(state_dir: Path) -> tuple[str, Path]:
    """The dashboard's token and its file: read it, or make it once (0600). ConfigError if others may read it."""
    path = state_dir / paths.WEB_TOKEN
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077 or path.is_symlink():
            raise ConfigError(f"the dashboard's token file {path} has mode {mode:04o}; it must be private: "
                              f"run 'chmod 600 {path}' (or delete it for a new token)") from None
        token = path.read_text(encoding="ascii").strip()
        if len(token) >= 32:
            return token, path
        raise ConfigError(f"the dashboard's token file {path} holds no token; delete it for a new one") from None
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    return token, path


def cookie_name(port: int) -> str:
    return f"tagent_token_{port}"


class TokenGate:
    """ASGI middleware: lets a request through only with the token (see the module's guarantees)."""

    def __init__(self, app: ASGIApp, token: str, token_file: Path, port: int) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie_name(port)
        self.refusal = NO_TOKEN.format(path=token_file)

    def _is_token(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = self.check(scope)
        if response is not None:
            await secured(response)(scope, receive, send)
            return
        await self.app(scope, receive, secured_send(send))

    def check(self, scope: Scope) -> Response | None:
        """None when the request may go on; else the answer it gets (a login redirect, 401 or 403)."""
        headers = Headers(scope=scope)
        method = scope["method"]
        query = QueryParams(scope.get("query_string", b""))
        bearer = headers.get("authorization", "")
        header_token = bearer[7:].strip() if bearer[:7].lower() == "bearer " else headers.get(HEADER)
        if method in SAFE_METHODS and "token" in query:
            if not self._is_token(query["token"]):
                return PlainTextResponse(self.refusal, status_code=401)
            return self._login(scope, query)
        if method not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and origin != f"{scope.get('scheme', 'http')}://{headers.get('host', '')}":
                return PlainTextResponse(f"403 Forbidden: a request from {origin} may not change anything here\n",
                                         status_code=403)
            if not self._is_token(header_token):
                return PlainTextResponse(self.refusal, status_code=401)
            return None
        if self._is_token(header_token) or self._is_token(cookie_parser(headers.get("cookie", "")).get(self.cookie)):
            return None
        return PlainTextResponse(self.refusal, status_code=401)

    def _login(self, scope: Scope, query: QueryParams) -> Response:
        rest = urlencode([(k, v) for k, v in query.multi_items() if k != "token"])
        path = "/" + scope["path"].lstrip("/")  # never "//host": the redirect stays on this dashboard
        target = path + (f"?{rest}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
        return response


def secured_send(send: Send) -> Send:
    """`send` that adds the security headers to the response's start."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
        await send(message)

    return wrapped


def secured(response: Response) -> Any:
    """`response` as an ASGI app that sends the security headers too."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await response(scope, receive, secured_send(send))

    return app
