"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and the agent benchmark.

    with ScriptedServer() as server:
        server.script(Reply.tool("lookup", {"q": "acme"}), Reply.final({"name": "Acme"}))
        ...  # point an agent at server.base_url
        server.requests  # every request body, in arrival order

Each POST to /v1/chat/completions takes the next `Reply` of the script (or the
default one when the script is empty) and answers it: a tool call, the final
structured output (a call of the output tool the request offers), plain text,
JSON text (`Reply.json`, what TAgent reads), or an HTTP error with optional
headers (429 with Retry-After, 500). A reply may delay its answer. The server records every request (body and headers) and the
largest number of requests it has had in flight at once (from receiving a request
until its answer starts to leave).

It runs in a thread of the test process (stdlib ThreadingHTTPServer: one thread
per connection, so delays overlap) and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer. Build with the class methods."""

    kind: str                       # "tool", "final", "text", "error"
    name: str | None = None         # tool name (kind "tool")
    args: Any = None                # tool or final arguments (a dict, or a raw string for invalid JSON)
    text: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    prompt_tokens: int = 100
    completion_tokens: int = 20

    @classmethod
    def tool(cls, name: str, args: dict[str, Any], **kw: Any) -> Reply:
        return cls("tool", name=name, args=args, **kw)

    @classmethod
    def final(cls, args: Any, **kw: Any) -> Reply:
        """Call the request's output tool (the one named final_result*) with `args` (a dict, or a raw JSON string)."""
        return cls("final", args=args, **kw)

    @classmethod
    def say(cls, text: str, **kw: Any) -> Reply:
        return cls("text", text=text, **kw)

    @classmethod
    def json(cls, obj: Any, **kw: Any) -> Reply:
        """Plain assistant text holding `obj` as JSON (a raw string is sent as it is): what TAgent parses."""
        return cls("text", text=obj if isinstance(obj, str) else json.dumps(obj), **kw)

    @classmethod
    def error(cls, status: int, message: str = "scripted error", headers: dict[str, str] | None = None, **kw: Any) -> Reply:
        return cls("error", status=status, text=message, headers=dict(headers or {}), **kw)


@dataclass
class Seen:
    """A request as the server received it."""

    at: float
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.body.get("tools") or []]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages") or []


class ScriptedServer:
    """The server; a context manager that starts it on a free port and stops it."""

    def __init__(self, default: Reply | Callable[[Seen], Reply] | None = None) -> None:
        self.default = default or Reply.say("ok")
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-server", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *replies: Reply) -> ScriptedServer:
        """Queue replies, answered in order before the default one."""
        with self._lock:
            self._script.extend(replies)
        return self

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    # -- answering ------------------------------------------------------------------------

    def _next(self, seen: Seen) -> Reply:
        with self._lock:
            self.requests.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self._script:
                return self._script.popleft()
        return self.default(seen) if callable(self.default) else self.default

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _answer(self, seen: Seen, reply: Reply) -> tuple[int, dict[str, str], dict[str, Any]]:
        if reply.kind == "error":
            body = {"error": {"message": reply.text, "type": "scripted", "code": str(reply.status)}}
            return reply.status, reply.headers, body
        message: dict[str, Any] = {"role": "assistant", "content": None}
        finish = "tool_calls"
        if reply.kind == "text":
            message["content"], finish = reply.text, "stop"
        else:
            name = reply.name if reply.kind == "tool" else _output_tool(seen)
            args = reply.args if isinstance(reply.args, str) else json.dumps(reply.args)
            message["tool_calls"] = [{"id": f"call_{next(self._ids)}", "type": "function",
                                      "function": {"name": name, "arguments": args}}]
        body = {
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": seen.body.get("model", "scripted"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens},
        }
        return 200, reply.headers, body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                return None

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {}, {"error": {"message": f"no route {self.path}"}})
                    return
                seen = Seen(at=time.monotonic(), body=json.loads(raw or b"{}"), headers=dict(self.headers.items()))
                reply = server._next(seen)
                try:
                    if reply.delay:
                        time.sleep(reply.delay)  # ok-sleep: a scripted slow answer
                    answer = server._answer(seen, reply)
                finally:
                    server._done()  # before the answer leaves: a client holding it is no longer in flight here
                self._send(*answer)

            def _send(self, status: int, headers: dict[str, str], body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _output_tool(seen: Seen) -> str:
    names = [n for n in seen.tool_names if n.startswith("final_result")]
    if not names:
        raise AssertionError(f"the request offers no output tool (tools: {seen.tool_names})")
    return names[0]


def final_for(args: Any, **kw: Any) -> Callable[[Seen], Reply]:
    """A default responder that answers every request with the final output `args`."""
    return lambda seen: Reply.final(args, **kw)


# -- TAgent 0.7.1 -------------------------------------------------------------------------------------------
# TAgent never uses tool calling: each of its requests is a plain chat completion whose answer it reads from
# `choices[0].message.content`. One run of `tagent.run_agent` (docs/research/tagent-0.7.1.md, section 2) is:
#   plan      JSON of its TaskBasedPlanResponse: the tasks, each a user tool (run locally, no request),
#             "llm_task" (one more request, answered with free text) or null (same as llm_task);
#   evaluate  JSON of its TaskBasedEvaluateResponse: goal_achieved true ends the loop, false plans again
#             (at most max_iterations times);
#   finalize  JSON of the run's output_format (TAgent's DefaultFinalOutput without one).
# An answer that does not validate is asked again, 3 times in all; past that the phase fails.

def tagent_phase(seen: Seen) -> str:
    """Which TAgent request `seen` is: "plan", "llm_task", "evaluate", "finalize" (or "unknown")."""
    messages = seen.messages
    system = (messages[0].get("content") or "") if messages else ""
    user = (messages[-1].get("content") or "") if messages else ""
    if system.startswith("You are a helpful assistant. Complete the user's request directly"):
        return "llm_task"
    if '"title": "TaskBasedPlanResponse"' in system:
        return "plan"
    if '"title": "TaskBasedEvaluateResponse"' in system:
        return "evaluate"
    if "\nEXECUTION SUMMARY:" in user:
        return "finalize"
    return "unknown"


def tagent_task(tool: str | None, description: str = "do it", **args: Any) -> dict[str, Any]:
    """One task of a TAgent plan: call `tool` (a user tool's name, or "llm_task" with args prompt=...)."""
    return {"description": description, "tool_name": tool, "tool_args": args}


def tagent_evaluation(achieved: bool = True) -> dict[str, Any]:
    return {"goal_achieved": achieved, "reasoning": "scripted evaluation", "completed_tasks_analysis": "all done",
            "failed_tasks_analysis": "none", "confidence": 0.9 if achieved else 0.2}


def tagent_script(final: Any, *tasks: dict[str, Any], llm_text: str = "Hello!", **kw: Any) -> list[Reply]:
    """The replies, in order, that take one `tagent.run_agent` to goal_achieved=True with `final` as its output:
    plan `tasks` (see tagent_task), answer each llm_task with `llm_text`, evaluate achieved, finalize `final`
    (the output_format's fields as a dict). Keywords (prompt_tokens=, ...) go to every reply.

        server.script(*tagent_script({"city": "Lisbon", "forecast": "sunny"}, tagent_task("get_weather", city="Lisbon")))
        tagent.run_agent("Weather in Lisbon?", model="openai/gpt-4o-mini", tools=[get_weather], max_iterations=3,
                         output_format=Weather)   # with OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY set
    """
    plan = {"tasks": list(tasks), "strategy": "scripted strategy", "reasoning": "scripted plan"}
    asked = [Reply.say(llm_text, **kw) for task in tasks if task["tool_name"] in (None, "llm_task")]
    return [Reply.json(plan, **kw), *asked, Reply.json(tagent_evaluation(), **kw), Reply.json(final, **kw)]


def main() -> None:
    """`python tests/openai_server.py [FINAL_JSON]`: serve in a process of its own (benchmarks), answering every
    request with the final output FINAL_JSON; prints the base URL, stops when stdin closes."""
    import sys

    args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"ok": True}
    with ScriptedServer(default=final_for(args, prompt_tokens=200, completion_tokens=20)) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
