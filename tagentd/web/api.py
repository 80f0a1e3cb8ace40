"""The dashboard's JSON API, its actions and its live stream: each route asks the daemon (`AsyncClient`)
and shapes the answer with views.py.

- GET  /api/runs?status=&pipeline=&q=        the runs list (newest first) and the pipelines seen in it
- GET  /api/runs/{id}                          a run: steps, DAG (SVG, states applied by the page), timing bars,
                                               failure analysis
- GET  /api/runs/{id}/steps/{step}             a step: error and traceback, inputs, output, logs, transcript
- POST /api/runs/{id}/cancel|resume|rollback   and POST /api/runs/{id}/steps/{step}/retry
- GET  /api/broker, /api/broker/spaces/{name}  mailboxes, topic rates, spaces (keys, access log), pipelines
- GET  /api/watch, /api/daemon                 the watched folders and their files; the daemon's status
- GET  /api/stream?topics=&run=&rates=         Server-Sent Events from the shared feed (feed.py)
- GET  /metrics                                the daemon's Prometheus metrics (`get_metrics`), for a scraper

A daemon error is a JSON `{"error", "code"}` with a matching HTTP status (404 no such run, 503 no daemon...).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tagent_client.client.aio import AsyncClient
from tagent_client.errors import NotFound, TagentError
from tagentd.web import views
from tagentd.web.dag import Graphs
from tagentd.web.feed import Feed

STATUS = {"not_found": 404, "daemon_unavailable": 503, "request_timeout": 504, "invalid_request": 400,
          "name_too_long": 400, "request_too_large": 413, "permission_denied": 403}
RUNS_SCANNED = 500    # runs a filtered list looks through
SPACE_KEYS = 200      # keys of a space shown
SPACE_LOG = 50        # access-log lines of a space shown
HEARTBEAT = 15.0      # seconds between two keep-alive comments on an idle stream
BATCH = 500           # events written to a stream at once, at most
ACTIONS = ("cancel", "resume", "rollback")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(views.plain(data)), status_code=status, media_type="application/json")


def error_response(exc: TagentError) -> Response:
    return json_response({"error": exc.message, "code": exc.code}, STATUS.get(exc.code, 409))


Handler = Callable[[Request], Awaitable[Response]]


def answers(handler: Callable[[Api, Request], Awaitable[Any]]) -> Callable[[Api], Handler]:
    """A route whose daemon errors become JSON error replies."""

    def bind(api: Api) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                result = await handler(api, request)
            except TagentError as exc:
                return error_response(exc)
            return result if isinstance(result, Response) else json_response(result)

        return endpoint

    return bind


class Api:
    """The routes, over one client of the daemon and the shared feed."""

    def __init__(self, client: AsyncClient, feed: Feed) -> None:
        self.client = client
        self.feed = feed
        self.graphs = Graphs()

    def routes(self) -> list[Route]:
        return [
            Route("/api/runs", answers(Api.runs)(self)),
            Route("/api/runs/{run_id}", answers(Api.run)(self)),
            Route("/api/runs/{run_id}/steps/{step}", answers(Api.step)(self)),
            Route("/api/runs/{run_id}/steps/{step}/retry", answers(Api.retry)(self), methods=["POST"]),
            Route("/api/runs/{run_id}/{action}", answers(Api.act)(self), methods=["POST"]),
            Route("/api/broker", answers(Api.broker)(self)),
            Route("/api/broker/spaces/{name}", answers(Api.space)(self)),
            Route("/api/watch", answers(Api.watch)(self)),
            Route("/api/daemon", answers(Api.daemon)(self)),
            Route("/api/stream", self.stream),
            Route("/metrics", self.metrics),
        ]

    # -- runs -------------------------------------------------------------------------------------------

    async def runs(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        status = q.get("status") or None
        pipeline, search = q.get("pipeline", ""), q.get("q", "").strip()
        limit = RUNS_SCANNED if (pipeline or search) else _int(q.get("limit"), 100)
        found = await self.client.runs(limit=limit, status=status)
        return {"runs": views.runs_list(found, pipeline, search)[:100],
                "pipelines": sorted({r.pipeline for r in found})}

    async def run(self, request: Request) -> dict[str, Any]:
        run_id = request.path_params["run_id"]
        detail = await self.client.status(run_id, plan=True)
        batch = await self.client.events(detail.run_id)
        page = views.run_page(detail, batch.events)
        page["graph"] = await self.graphs.svg(detail)
        return page

    async def step(self, request: Request) -> dict[str, Any]:
        run_id, step = request.path_params["run_id"], request.path_params["step"]
        detail = await self.client.status(run_id, plan=True)
        if step not in detail.steps:
            raise NotFound(f"run {detail.run_id} has no step {step!r}")
        result = await self.client.result(detail.run_id)
        logs = [line async for line in self.client.logs(detail.run_id)]
        transcript = await self.client.transcript(detail.run_id, step)
        return views.step_page(detail, step, result.step_outputs.get(step), logs,
                               transcript if transcript.get("kind") in ("agent", "tagent") else None)

    async def act(self, request: Request) -> Response:
        run_id, action = request.path_params["run_id"], request.path_params["action"]
        if action not in ACTIONS:
            return json_response({"error": f"no action {action!r}: one of {', '.join(ACTIONS)}", "code": "not_found"},
                                 404)
        if action == "cancel":
            return json_response(await self.client.cancel(run_id, "cancelled from the dashboard"))
        return json_response(await getattr(self.client, action)(run_id))

    async def retry(self, request: Request) -> dict[str, Any]:
        return await self.client.retry(request.path_params["run_id"], request.path_params["step"])

    # -- broker, watch, daemon ------------------------------------------------------------------------------

    async def broker(self, request: Request) -> dict[str, Any]:
        stats = await self.client.broker_stats()
        pipelines = await self.client.pipelines()
        return {"stats": stats, "pipelines": pipelines, "topics": self.feed.topics.rates(time.monotonic()),
                "following_all": self.feed.connected and self.feed.prefixes() == ("",)}

    async def space(self, request: Request) -> dict[str, Any]:
        space = self.client.space(request.path_params["name"])
        keys = await space.listing()
        log = await space.log(SPACE_LOG)
        return {"name": request.path_params["name"], "keys": [{"key": k, "version": v, "bytes": n} for k, v, n in keys[:SPACE_KEYS]],
                "more_keys": max(0, len(keys) - SPACE_KEYS), "log": list(reversed(log))}

    async def watch(self, request: Request) -> Any:
        return await self.client.watch()

    async def daemon(self, request: Request) -> dict[str, Any]:
        """The daemon's status, with this machine's load and what the dashboard itself is doing."""
        info = views.plain(await self.client.daemon_status())
        info["host"] = {"load": list(os.getloadavg()), "cpus": os.cpu_count()}
        info["dashboard"] = {"tabs": len(self.feed.listeners), "events_received": self.feed.received,
                             "subscribed": self.feed.connected}
        return info

    async def metrics(self, request: Request) -> Response:
        """The daemon's metrics in the Prometheus text format (a scraper sends the token as a bearer token)."""
        try:
            text = await self.client.metrics()
        except TagentError as exc:
            return error_response(exc)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- the live stream ------------------------------------------------------------------------------------

    async def stream(self, request: Request) -> Response:
        """Server-Sent Events: each event the tab asked for as one `data:` line of JSON; `{"topic": "resync"}`
        means "reload your data"; a comment every HEARTBEAT seconds keeps the connection alive."""
        q = request.query_params
        prefixes = [p for p in q.get("topics", "").split(",") if p]
        listener = self.feed.listen(prefixes, q.get("run") or None, rates=q.get("rates") == "1")

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 1000\n\n"
                while True:
                    try:
                        items = [await asyncio.wait_for(listener.queue.get(), HEARTBEAT)]
                    except TimeoutError:
                        yield b": alive\n\n"
                        continue
                    while not listener.queue.empty() and len(items) < BATCH:  # a burst leaves in one write
                        items.append(listener.queue.get_nowait())
                    yield b"".join(b"data: " + msgspec.json.encode(views.plain(i)) + b"\n\n" for i in items)
            finally:
                self.feed.leave(listener)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no", "Cache-Control": "no-store"})


def _int(value: str | None, default: int) -> int:
    try:
        return max(1, min(int(value or default), 10_000))
    except ValueError:
        return default

