"""The dashboard's Starlette app: the page, its static files, the API, all behind the token gate."""

from __future__ import annotations

import asyncio
import contextlib
import html
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from tagent_client.client.aio import AsyncClient
from tagentd.web.api import Api
from tagentd.web.auth import TokenGate
from tagentd.web.dag import graph_css
from tagentd.web.feed import Feed

STATIC = Path(__file__).parent / "static"
REQUEST_TIMEOUT = 10.0


def create_app(runtime_dir: Path, token: str, token_file: Path, port: int) -> ASGIApp:
    """The app for the daemon whose sockets are in `runtime_dir`, reachable only with `token`."""
    client = AsyncClient(runtime_dir, timeout=REQUEST_TIMEOUT)
    feed = Feed(runtime_dir)
    api = Api(client, feed)

    # The page carries the token for its actions' header: only a request that passed the gate sees it, and a
    # foreign page cannot read it (same-origin policy).
    page = (STATIC / "index.html").read_text(encoding="utf-8").replace("{{token}}", html.escape(token, quote=True))

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def stylesheet(request: Request) -> Response:
        return Response(graph_css(), media_type="text/css")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(feed.run())
        try:
            yield
        finally:
            task.cancel()
            client.close()

    app = Starlette(routes=[Route("/", index), Route("/graph.css", stylesheet), *api.routes(), Mount("/static", StaticFiles(directory=STATIC))],
                    lifespan=lifespan)
    return TokenGate(app, token, token_file, port)
