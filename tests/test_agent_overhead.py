"""What an agent step costs beyond the model's own work (issue 17's "orchestration overhead per agent step").

In one process against the scripted OpenAI-compatible server: an endpoint's SDK client is not copied per
request, and the first request's permit and breaker verdict are asked for while pydantic-ai prepares the
run (runners/early.py), given back when no request takes them.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_server import Reply, ScriptedServer, final_for
from pydantic import BaseModel

from tagent_client import Pipeline
from tagent_client.core.events import Dispatch, StepFailed, StepSucceeded
from tagent_client.core.state import Phase
from tagent_client.run.context import StepContext
from tagent_client.run.llm import EndpointSettings, LLMConfig, LLMRuntime
from tagent_client.run.local import run_task
from tagent_client.run.runners.models import model_for
from tagent_client.run.services import LocalServices

pytestmark = pytest.mark.timeout(60)


class Company(BaseModel):
    name: str
    founded: int


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(default=final_for({"name": "Acme", "founded": 1999})) as s:
        yield s


def runtime(server: ScriptedServer, **endpoint: Any) -> LLMRuntime:
    settings = EndpointSettings(base_url=server.base_url, **endpoint)
    return LLMRuntime.local(LLMConfig(endpoints={"local": settings}))


def pipeline() -> Pipeline:
    p = Pipeline("overhead")
    p.step("find", goal="Find the company's founding year", output_schema=Company, model="local:llama3")
    return p


async def attempt(p: Pipeline, llm: LLMRuntime, step: str = "find") -> StepSucceeded | StepFailed:
    """The first attempt of `step` of `p`, run in process as a worker runs it."""
    task = Dispatch(task=step, step=step, phase=Phase.RUN, attempt=1, inputs={}, timeout=20)
    ctx = StepContext(services=LocalServices(), run_id="r1", pipeline=p.name, step_name=step, attempt=1,
                      params={}, shared={}, inputs={})
    return await run_task(p, task, ctx, None, llm)  # type: ignore[return-value]


def test_an_endpoints_requests_go_through_its_one_sdk_client_without_copies(
        server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an endpoint model, when three agent attempts run on it, then no request copies the SDK client
    (a per-request `max_retries` setting makes pydantic-ai copy it: ~1 ms and a thread hop each), and the
    SDK still does not retry by itself: with request_retries=0 a 500 reaches the server once."""
    copies: list[Any] = []
    original = openai.AsyncOpenAI.with_options

    def counted(self: openai.AsyncOpenAI, *args: Any, **kwargs: Any) -> Any:
        copies.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(openai.AsyncOpenAI, "with_options", counted)
    llm, p = runtime(server), pipeline()

    async def three() -> list[StepSucceeded | StepFailed]:
        return [await attempt(p, llm) for _ in range(3)]

    events = asyncio.run(three())
    assert all(isinstance(e, StepSucceeded) for e in events), events
    assert copies == []
    assert len(server.requests) == 3

    server.script(Reply.error(500))
    failed = asyncio.run(attempt(p, runtime(server, request_retries=0)))
    assert isinstance(failed, StepFailed) and failed.error.retryable
    assert len(server.requests) == 4


def breaker_order(llm: LLMRuntime, at_once: bool) -> list[str]:
    """One agent attempt on `llm` whose breaker gate answers at once or not (as a worker with or without a
    lease): when the breaker was asked and when the model's request was entered, in order."""
    built = model_for("local:llama3", llm)
    seen: list[str] = []
    assert llm.breakers is not None
    admit, request = llm.breakers.admit, built.model.request

    async def asked(name: str) -> Any:
        seen.append("breaker asked")
        return await admit(name)

    async def entered(*args: Any, **kwargs: Any) -> Any:
        seen.append("request entered")
        return await request(*args, **kwargs)

    llm.breakers.admit = asked  # type: ignore[method-assign]
    llm.breakers.admits_at_once = lambda name: at_once  # type: ignore[method-assign]
    built.model.request = entered  # type: ignore[method-assign]
    event = asyncio.run(attempt(pipeline(), llm))
    assert isinstance(event, StepSucceeded), event
    return seen


def test_the_first_requests_breaker_verdict_is_asked_as_the_run_starts(server: ScriptedServer) -> None:
    """Given an endpoint with a breaker (every model has one) whose verdict is not answered at once (a worker
    without a lease asks the daemon), when an agent attempt runs, then the breaker is asked before the model's
    request is even entered (the ask overlaps pydantic-ai's preparation of the run), and only once for the one
    request."""
    assert breaker_order(runtime(server), at_once=False) == ["breaker asked", "request entered"]


def test_a_breaker_that_answers_at_once_is_asked_by_the_request_itself(server: ScriptedServer) -> None:
    """Given an endpoint without limits whose breaker answers at once (in-process, or a worker holding a lease),
    when an agent attempt runs, then nothing is asked ahead (no task of its own: there is no wait to overlap):
    the request admits itself, once; and an in-process runtime's breakers do answer at once."""
    assert breaker_order(runtime(server), at_once=True) == ["request entered", "breaker asked"]
    assert LLMRuntime.local().breakers.admits_at_once("llm:local")  # type: ignore[union-attr]


class FakeModel:
    """Stands for a LimitedModel: its admission waits until `answer` is set; `abandon` records what came back."""

    admits_ahead = True

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.asking = asyncio.Event()
        self.answered = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.abandoned: list[tuple[Any, Any]] = []

    async def admission(self, messages: list[Any]) -> tuple[Any, Any]:
        self.asking.set()
        try:
            await self.answer.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        self.answered.set()  # the ask returns in this same step: whoever wakes on this sees it done
        return "permit", "ticket"

    def abandon(self, permit: Any, ticket: Any) -> None:
        self.abandoned.append((permit, ticket))


def test_an_early_admission_no_request_took_is_given_back() -> None:
    """Given runs whose early admission no request takes, when a run ends after its admission was granted,
    then the permit and ticket are given back (abandoned, no verdict); when it ends while still asking, the
    ask is cancelled (its own handlers give back what they hold); and a request takes an admission once."""
    from tagent_client.run.runners.early import early_admission, take_early_admission

    async def scenario() -> None:
        granted = FakeModel()
        with early_admission(granted):
            granted.answer.set()
            await granted.answered.wait()
        assert granted.abandoned == [("permit", "ticket")]

        pending = FakeModel()
        with early_admission(pending):
            await pending.asking.wait()
        await asyncio.wait_for(pending.cancelled.wait(), 5)
        assert pending.abandoned == []

        taken = FakeModel()
        with early_admission(taken):
            taken.answer.set()
            first = take_early_admission(taken)
            assert first is not None and await first == ("permit", "ticket")
            assert take_early_admission(taken) is None and take_early_admission(FakeModel()) is None
        assert taken.abandoned == []

    asyncio.run(scenario())


def test_only_outcomes_that_can_change_the_daemons_breaker_are_sent(tmp_path: Any) -> None:
    """Given a worker's BreakerClient on its real link, and a scripted daemon on a ROUTER socket that admits every
    call (the one named "probe" as the breaker's probe), when calls end with success, no verdict and failure, then
    the daemon receives a breaker_outcome for the failure and for each end of the probe only: a call that was not
    the probe and did not fail changes nothing at the daemon (only the probe's success closes a breaker, only
    failures open one), so it costs no message, one fewer per model request."""
    import threading

    import zmq

    from tagentd.worker import wire
    from tagentd.worker.breakers import BreakerClient
    from tagentd.worker.link import WorkerLink

    endpoint = f"ipc://{tmp_path}/workers.sock"
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    received: list[Any] = []
    stop = threading.Event()

    def daemon() -> None:  # answers every ask; records every message in arrival order
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while not stop.is_set():
            if not poller.poll(20):
                continue
            identity, frame = router.recv_multipart()
            messages, _ = wire.unpack(frame, wire.from_worker_decoder)
            for message in messages:
                received.append(message)
                if isinstance(message, wire.BreakerAsk):
                    answer = wire.BreakerAnswer(req=message.req, allowed=True, generation=1,
                                                probe=message.name == "probe")
                    router.send_multipart([identity, wire.encode(answer)])

    async def calls() -> None:
        link = WorkerLink(context, endpoint, b"w1.token")
        client = BreakerClient(link, asyncio.get_running_loop())

        def on_frame(frame: bytes) -> None:
            for message in wire.unpack(frame, wire.to_worker_decoder)[0]:
                client.answered(message)

        link.start(on_frame)
        try:
            for name, ok in [("llm:a", True), ("llm:a", None), ("llm:a", False), ("probe", True), ("probe", None)]:
                client.report(await asyncio.wait_for(client.admit(name), 10), ok)
            marker = await asyncio.wait_for(client.admit("marker"), 10)  # everything sent before it has arrived
            assert client.outstanding == [marker.id]
        finally:
            link.close()

    thread = threading.Thread(target=daemon, daemon=True)
    thread.start()
    try:
        asyncio.run(calls())
    finally:
        stop.set()
        thread.join(5)
        router.close()
        context.term()
    outcomes = [(m.name, m.ok) for m in received if isinstance(m, wire.BreakerOutcome)]
    assert outcomes == [("llm:a", False), ("probe", True), ("probe", None)]
    assert [m.name for m in received if isinstance(m, wire.BreakerAsk)] == ["llm:a"] * 3 + ["probe"] * 2 + ["marker"]


def test_an_agent_is_built_once_per_definition_and_the_cache_is_bounded(server: ScriptedServer) -> None:
    """Given two loads of one pipeline (two step objects with one definition: what a re-submitted file or a step
    added at run time gives a worker), when an attempt of each runs in one runtime, then one pydantic-ai Agent
    serves both (building one costs ~1 ms); a step that differs in anything the Agent is built from (here its
    goal) gets its own; and the cache keeps at most its limit of Agents, the least recently used going first."""
    llm = runtime(server)
    first, second = pipeline(), pipeline()
    assert first.steps["find"] is not second.steps["find"]
    for p in (first, second):
        assert isinstance(asyncio.run(attempt(p, llm)), StepSucceeded)
    assert len(llm.agents) == 1

    other = Pipeline("overhead")
    other.step("find", goal="Find the company's city", output_schema=Company, model="local:llama3")
    assert isinstance(asyncio.run(attempt(other, llm)), StepSucceeded)
    assert len(llm.agents) == 2
    assert len(server.requests) == 3

    from tagent_client.run.llm import AgentCache

    cache = AgentCache(limit=2)
    cache["a"], cache["b"] = "agent a", "agent b"
    assert cache.get("a") == "agent a"  # used: "b" is now the least recently used
    cache["c"] = "agent c"
    assert list(cache) == ["a", "c"]


def test_many_agent_steps_share_one_run_graph_when_not_traced(server: ScriptedServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a pipeline of 130 agent steps (more distinct step names than pydantic-ai keeps run graphs for: it
    builds one per agent name and keeps the last 128), when each step runs twice in one untraced runtime (a
    worker meeting them again), then pydantic-ai builds its run graph at most once, not on every run (~1.5-3 ms
    each, more than the rest of the step's orchestration)."""
    from pydantic_graph.graph_builder import GraphBuilder

    builds: list[str] = []
    original = GraphBuilder.build

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        builds.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GraphBuilder, "build", counted)
    llm, p, names = runtime(server), Pipeline("many"), [f"s{i:03d}" for i in range(130)]
    for name in names:
        p.step(name, goal="Find the company's founding year", output_schema=Company, model="local:llama3")

    async def each_twice() -> list[Any]:
        return [await attempt(p, llm, name) for _ in range(2) for name in names]

    assert all(isinstance(outcome, StepSucceeded) for outcome in asyncio.run(each_twice()))
    assert len(builds) <= 1, f"the run graph was built {len(builds)} times for 260 runs"


def test_a_model_the_price_table_does_not_know_is_looked_up_once_not_per_response(
        server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an endpoint model genai-prices does not know (`llama3` on a local server), when four attempts run,
    then the table is searched for it on the first response only (pydantic-ai searched again for every response:
    ~0.1-0.2 ms each), each costs 0 as before and the transcripts carry no cost; and a model the table knows
    (`gpt-4o-mini`, the server echoing the name) is still priced by it."""
    from genai_prices.data_snapshot import DataSnapshot

    lookups: list[str] = []
    find = DataSnapshot.find_provider_model

    def counted(self: DataSnapshot, model_ref: str, *args: Any, **kwargs: Any) -> Any:
        lookups.append(model_ref)
        return find(self, model_ref, *args, **kwargs)

    monkeypatch.setattr(DataSnapshot, "find_provider_model", counted)
    llm, p = runtime(server), pipeline()

    async def three(p: Pipeline) -> list[StepSucceeded | StepFailed]:
        return [await attempt(p, llm) for _ in range(3)]

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        events = [asyncio.run(attempt(p, llm))]
        assert lookups  # the first response: the table was searched for the model
        lookups.clear()
        events += asyncio.run(three(p))
    assert lookups == []  # not again for the next three
    assert not [w for w in warned if "cost" in str(w.message)]  # a cost of the type pydantic-ai serializes
    assert all(isinstance(e, StepSucceeded) and e.usage is not None and e.usage.cost == 0 for e in events), events
    assert all("cost" not in m.get("usage", {}) for e in events for m in e.transcript["messages"])  # type: ignore[index]

    known = Pipeline("priced")
    known.step("find", goal="Find the company's founding year", output_schema=Company, model="local:gpt-4o-mini")
    priced = asyncio.run(three(known))
    assert all(isinstance(e, StepSucceeded) and e.usage is not None and e.usage.cost > 0 for e in priced), priced


JSON_LEAVES = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text()
JSON_DATA = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(JSON_DATA)
def test_the_user_prompts_json_is_the_text_json_dumps_writes(data: Any) -> None:
    """Given any JSON-like data (unicode, control characters, big ints, floats with exponents, NaN and infinities,
    int keys), when an agent step's user message is written (`indented_json`), then it is exactly the text of
    `json.dumps(data, indent=1, default=str)`, what the model saw before it was made cheaper."""
    import json

    from tagent_client.run.runners.agent import indented_json

    assert indented_json(data) == json.dumps(data, indent=1, default=str)


def test_the_user_prompt_is_not_written_by_jsons_python_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given json's pure-Python encoder made unusable (json.dumps falls back to it whenever an indent is asked for,
    ~30 µs for a small document on every agent step), when an agent step's user message is written, then it is
    written all the same: by json's C encoder, re-indented by msgspec."""
    import json.encoder

    from tagent_client.run.runners.agent import user_prompt

    def python_encoder(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("json's Python encoder was used")

    monkeypatch.setattr(json.encoder, "_make_iterencode", python_encoder)
    ctx = StepContext(services=LocalServices(), run_id="r1", pipeline="p", step_name="find", attempt=1,
                      params={"company": "acme"}, shared={}, inputs={"previous": {"name": "Acme", "founded": 1999}})
    assert user_prompt(ctx) == '{\n "inputs": {\n  "previous": {\n   "name": "Acme",\n   "founded": 1999\n  }\n },' \
                               '\n "shared": {},\n "params": {\n  "company": "acme"\n }\n}'


def test_a_models_customized_request_parameters_are_remembered_per_definition_and_never_shared(
        server: ScriptedServer) -> None:
    """Given one endpoint model and four agent steps on it (different output schemas, one with a tool, and two
    whose schemas differ only in a default of 1 and 1.0, which Python's == takes as equal), when they run in turn
    three times in one runtime, then every request each step sends is the request it sends from a fresh runtime
    (its own schema and tools, nothing of another step's, nothing changed by reuse), and the model customized the
    parameters once per step (pydantic-ai's schema walk, ~60 us twice a request), remembering one answer each."""
    from pydantic import BaseModel as Model

    from tagent_client.run.runners.models import RememberedCustomizations

    def scored(default: float) -> type[Model]:
        class Scored(Model):
            score: float = default

        return Scored

    class City(Model):
        city: str

    def lookup(company: str) -> str:
        """Look up a company."""
        return f"{company} is in Paris"

    p = Pipeline("remembered")
    p.step("founded", goal="Find the company's founding year", output_schema=Company, model="local:llama3")
    p.step("city", goal="Find the company's city", output_schema=City, model="local:llama3", tools=[lookup])
    p.step("int_default", goal="Score it", output_schema=scored(1), model="local:llama3")
    p.step("float_default", goal="Score it", output_schema=scored(1.0), model="local:llama3")
    outputs = {"founded": {"name": "Acme", "founded": 1999}, "city": {"city": "Paris"},
               "int_default": {"score": 1}, "float_default": {"score": 1.0}}
    # each step's own output; its name is the first quoted word of its system prompt ("You are one step, 'NAME', ...")
    server.default = lambda seen: Reply.final(outputs[seen.body["messages"][0]["content"].split("'")[1]])

    async def each(llm: LLMRuntime, names: list[str]) -> list[Any]:
        return [await attempt(p, llm, name) for name in names]

    fresh: dict[str, dict[str, Any]] = {}
    for name in outputs:
        assert all(isinstance(e, StepSucceeded) for e in asyncio.run(each(runtime(server), [name])))
        fresh[name] = server.requests[-1].body
    assert json_text(fresh["int_default"]["tools"]) != json_text(fresh["float_default"]["tools"])  # 1 and 1.0

    llm, sent = runtime(server), len(server.requests)
    assert all(isinstance(e, StepSucceeded) for e in asyncio.run(each(llm, list(outputs) * 3)))
    bodies = [seen.body for seen in server.requests[sent:]]
    assert [json_text(b) for b in bodies] == [json_text(fresh[name]) for name in list(outputs) * 3]
    customize = model_for("local:llama3", llm).model.wrapped.customize_request_parameters
    assert isinstance(customize, RememberedCustomizations) and len(customize) == 4


def json_text(body: Any) -> str:
    """A request body (or part of one) as JSON text: 1 and 1.0 written as the server received them."""
    import json

    return json.dumps(body)


def test_remembered_customizations_answer_equal_parameters_only_as_they_were_when_asked(server: ScriptedServer) -> None:
    """Given an endpoint model's own customization of request parameters, remembered, when parameters are asked
    about, then asked about again in a new but equal object, then changed in place (a tool added) and asked again,
    then the equal ones get the remembered answer, the changed ones a fresh one equal to the model's own (the
    memory holds their form when asked, not the object); parameters with native tools are customized every time;
    and no more than `size` answers are kept, the least recently used going first."""
    import copy

    from pydantic_ai.models import ModelRequestParameters
    from pydantic_ai.native_tools import WebSearchTool
    from pydantic_ai.tools import ToolDefinition

    from tagent_client.run.runners.models import RememberedCustomizations

    model = model_for("local:llama3", runtime(server)).model.wrapped
    own = type(model).customize_request_parameters.__get__(model)
    remembered = RememberedCustomizations(own, size=2)

    def tool(name: str) -> ToolDefinition:
        return ToolDefinition(name=name, parameters_json_schema={"type": "object", "properties": {"q": {"type": "string"}},
                                                                 "required": ["q"]})

    params = ModelRequestParameters(function_tools=[tool("a")], output_mode="tool", output_tools=[tool("final_result")])
    first = remembered(params)
    assert first == own(params) and remembered(copy.deepcopy(params)) is first

    params.function_tools.append(tool("b"))
    changed = remembered(params)
    assert changed is not first and changed == own(params) and len(changed.function_tools) == 2
    assert remembered(ModelRequestParameters(function_tools=[tool("a")], output_mode="tool",
                                             output_tools=[tool("final_result")])) is first

    native = ModelRequestParameters(native_tools=[WebSearchTool()])
    assert remembered(native) is not remembered(native)
    remembered(ModelRequestParameters(function_tools=[tool("c")]))  # a third: the least recently used goes
    assert len(remembered) == 2 and remembered(params) is not changed
