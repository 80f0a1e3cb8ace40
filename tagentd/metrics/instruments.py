"""`Metrics`: the daemon's own Prometheus registry (prometheus-client) and the instruments its hot paths feed.

The daemon makes one `Metrics` and hands each part only what it feeds (a callable or this object); nothing
uses prometheus-client's global default registry, so two daemons in one process (tests) never share series.

Cost: what the hot paths do is O(1) and tiny. A finished attempt adds to its step's plain tallies (`_StepTally`:
a few additions, about a microsecond; prometheus-client's labelled children cost ten times that, a lock and a
walk of the buckets per observation), and an agent attempt to its model's, which become the step and model
series at each scrape; a WAL fsync and a commit are
one histogram observation each. Everything else (runs and steps by state, queue depth, workers,
permits, breakers, the broker's counters and depths) is read by collectors only when someone scrapes
(`collect`, added with `add_collector`), so a daemon nobody scrapes pays nothing for it.

Start-up: prometheus-client (with its HTTP and WSGI exposition modules) is imported, and the instruments made,
by `build()`, which the daemon calls once it answers requests, or by the first observation or scrape before
that, whichever comes first: the daemon's first answer does not wait for it.

Cardinality (labels are bounded): `pipeline` x `step` (the steps of the pipelines the daemon ran since it
started), `model` (the models steps used), `outcome` (3 values), `log` (2 values).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from tagent_client.core.events import StepFailed, StepSucceeded
from tagent_client.core.state import Usage

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: Step attempts last from milliseconds (function steps) to many minutes (agent steps).
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                1800.0, float("inf"))
#: A commit or an fsync takes from tens of microseconds (page cache, tmpfs) to seconds (a struggling disk).
DISK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                float("inf"))
_BUCKET_NAMES = tuple("+Inf" if b == float("inf") else repr(float(b)) for b in STEP_BUCKETS)  # the `le` labels
#: The help text of each step series.
STEP_HELP = {
    "seconds": "Wall time of step attempts that reported a result, measured by the worker from the attempt's start "
               "to its end.",
    "attempts": "Step attempts that reported a result, by outcome (succeeded, failed, timed_out).",
    "cpu": "CPU seconds of the step's attempts in their worker: a sync function's own thread, plus an equal share of "
           "the worker's event loop among the attempts on it.",
    "rss": "Peak resident set size of the worker process during the step's latest attempt.",
}
#: The help text of each model series.
LLM_HELP = {
    "requests": "Model requests made by step attempts, by model.",
    "tokens": "Tokens of model requests made by step attempts, by model and direction (input, output).",
    "cost": "Cost in US dollars of the model requests made by step attempts, by model (the configured price, else "
            "genai-prices; 0 for a model with no known price).",
}
#: The `outcome` label of tagentd_step_attempts_total: StepSucceeded, StepFailed, StepTimedOut.
OUTCOMES = ("succeeded", "failed", "timed_out")
#: What the worker sent for an attempt: (seconds, cpu_seconds, peak_rss_bytes), or None (not measured).
Resources = tuple[float, float, int] | None



class Metrics:
    """The registry and the instruments fed on the hot paths; `exposition()` renders everything on demand.

    Made without importing prometheus-client; `build()` (or the first use) makes the registry and instruments.
    """

    def __init__(self, *, process: bool = True) -> None:
        self._process = process
        self._built: _Instruments | None = None
        self._collectors: list[Callable[[], Iterable[Any]]] = []
        self._steps: dict[tuple[str, str], _StepTally] = {}  # each step's tallies, looked up once per attempt
        self._models: dict[str, list[Any]] = {}  # model -> [requests, input tokens, output tokens, cost in dollars]

    def build(self) -> _Instruments:
        """The registry and its instruments, made on the first call (prometheus-client is imported then)."""
        if self._built is None:
            self._built = _Instruments(self._process)
            self._built.registry.register(_on_scrape(self._step_families))
            self._built.registry.register(_on_scrape(self._model_families))
            for collect in self._collectors:
                self._built.registry.register(_on_scrape(collect))
        return self._built

    @property
    def registry(self) -> CollectorRegistry:
        return self.build().registry

    # -- what the hot paths call -------------------------------------------------------------------------

    def attempt_ended(self, pipeline: str, step: str, event: Any, seconds: float, resources: Resources) -> None:
        """An attempt of `step` reported `event` (StepSucceeded, StepFailed or StepTimedOut), once per attempt.

        `seconds` is the daemon's own measure (sent to reported), used when the worker sent no `resources`."""
        tally = self._steps.get((pipeline, step))
        if tally is None:
            tally = self._steps[(pipeline, step)] = _StepTally()
        tally.attempts[0 if isinstance(event, StepSucceeded) else 1 if isinstance(event, StepFailed) else 2] += 1
        if resources is not None:
            seconds, cpu, tally.rss = resources
            tally.cpu += max(0.0, cpu)
        seconds = max(0.0, seconds)
        tally.buckets[bisect_left(STEP_BUCKETS, seconds)] += 1  # the first bucket whose bound is >= seconds ("le")
        tally.seconds += seconds
        usage: Usage | None = getattr(event, "usage", None)
        if usage is not None and usage.requests:
            transcript = getattr(event, "transcript", None) or {}
            model = str(transcript.get("model") or "unknown")
            used = self._models.get(model)
            if used is None:
                used = self._models[model] = [0, 0, 0, 0.0]
            used[0] += usage.requests
            used[1] += usage.input_tokens
            used[2] += usage.output_tokens
            used[3] += max(0.0, usage.cost)

    def fsync_observer(self, log: str) -> Callable[[float], None]:
        """What a write-ahead log calls with the seconds each fsync took."""
        return _Observer(lambda: self.build().fsync_seconds.labels(log).observe)

    def commit_observer(self) -> Callable[[float], None]:
        """What the group commit calls with the seconds each successful commit took."""
        return _Observer(lambda: self.build().commit_seconds.observe)

    # -- scraping ------------------------------------------------------------------------------------------

    def _step_families(self) -> Iterator[Any]:
        """The step series, from the tallies: attempts by outcome, duration histogram, CPU seconds, peak RSS."""
        from prometheus_client.core import (  # noqa: PLC0415 - see the module's docstring
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        labels = ["pipeline", "step"]
        attempts = CounterMetricFamily("tagentd_step_attempts", STEP_HELP["attempts"], labels=[*labels, "outcome"])
        seconds = HistogramMetricFamily("tagentd_step_duration_seconds", STEP_HELP["seconds"], labels=labels)
        cpu = CounterMetricFamily("tagentd_step_cpu_seconds", STEP_HELP["cpu"], labels=labels)
        rss = GaugeMetricFamily("tagentd_step_peak_rss_bytes", STEP_HELP["rss"], labels=labels)
        for (pipeline, step), tally in self._steps.items():
            for outcome, count in zip(OUTCOMES, tally.attempts):
                attempts.add_metric([pipeline, step, outcome], count)
            cumulative, buckets = 0, []
            for bound, count in zip(_BUCKET_NAMES, tally.buckets):
                cumulative += count
                buckets.append((bound, cumulative))
            seconds.add_metric([pipeline, step], buckets, tally.seconds)
            cpu.add_metric([pipeline, step], tally.cpu)
            rss.add_metric([pipeline, step], tally.rss)
        yield from (attempts, seconds, cpu, rss)

    def _model_families(self) -> Iterator[Any]:
        """The model series, from the tallies: requests, tokens by direction, cost."""
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415 - see the module's docstring

        requests = CounterMetricFamily("tagentd_llm_requests", LLM_HELP["requests"], labels=["model"])
        tokens = CounterMetricFamily("tagentd_llm_tokens", LLM_HELP["tokens"], labels=["model", "direction"])
        cost = CounterMetricFamily("tagentd_llm_cost_dollars", LLM_HELP["cost"], labels=["model"])
        for model, (count, input_tokens, output_tokens, dollars) in self._models.items():
            requests.add_metric([model], count)
            tokens.add_metric([model, "input"], input_tokens)
            tokens.add_metric([model, "output"], output_tokens)
            cost.add_metric([model], dollars)
        yield from (requests, tokens, cost)

    def add_collector(self, collect: Callable[[], Iterable[Any]]) -> None:
        """Read `collect()` (metric families) at every scrape, and only then."""
        self._collectors.append(collect)
        if self._built is not None:
            self._built.registry.register(_on_scrape(collect))

    def exposition(self) -> str:
        """Every series, in the Prometheus text format (version 0.0.4)."""
        import prometheus_client  # noqa: PLC0415 - imported by build() already; see the module's docstring

        return prometheus_client.generate_latest(self.build().registry).decode("utf-8")


class _Observer:
    """An observation function resolved at its first call (which may build the instruments)."""

    __slots__ = ("_observe", "_resolve")

    def __init__(self, resolve: Callable[[], Callable[[float], None]]) -> None:
        self._resolve = resolve
        self._observe: Callable[[float], None] | None = None

    def __call__(self, seconds: float) -> None:
        if self._observe is None:
            self._observe = self._resolve()
        self._observe(seconds)


class _Instruments:
    """The registry and the instruments (prometheus-client objects)."""

    def __init__(self, process: bool) -> None:
        import prometheus_client  # noqa: PLC0415 - see the module's docstring
        from prometheus_client import CollectorRegistry, Histogram, ProcessCollector  # noqa: PLC0415

        prometheus_client.disable_created_metrics()  # no `_created` twin of every counter: half the exposition, no loss
        self.registry = CollectorRegistry()
        if process:
            ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        r = self.registry
        self.commit_seconds = Histogram(
            "tagentd_commit_duration_seconds", "Successful group commits: from the start of the commit to the end "
            "of every participant's flush (WAL writes and fsyncs included; a commit with nothing to write is near "
            "0).", buckets=DISK_BUCKETS, registry=r)
        self.fsync_seconds = Histogram(
            "tagentd_wal_fsync_duration_seconds", "Time of each fsync of a write-ahead log segment, by log "
            "(runs, broker).", ["log"], buckets=DISK_BUCKETS, registry=r)


class _StepTally:
    """One (pipeline, step)'s figures as plain numbers, turned into its series at each scrape (`_step_families`)."""

    __slots__ = ("attempts", "buckets", "seconds", "cpu", "rss")

    def __init__(self) -> None:
        self.attempts = [0, 0, 0]  # by outcome, as OUTCOMES
        self.buckets = [0] * len(STEP_BUCKETS)  # attempts whose duration falls in each bucket (not cumulative)
        self.seconds = 0.0  # the sum of the durations
        self.cpu = 0.0
        self.rss = 0  # peak RSS of the latest attempt that sent its resources


def _on_scrape(collect: Callable[[], Iterable[Any]]) -> Any:
    """A prometheus-client Collector that reads `collect()` at every scrape, and only then."""
    from prometheus_client.registry import Collector  # noqa: PLC0415 - see the module's docstring

    class OnScrape(Collector):
        def describe(self) -> list[Any]:
            return []  # not collected at registration: the parts it reads may not exist yet

        def collect(self) -> Iterable[Any]:
            return collect()

    return OnScrape()
