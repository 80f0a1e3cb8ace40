"""The daemon's run spans: each run's OpenTelemetry span, and the trace id kept in the run's history.

Made only when `otlp_endpoint` is set (the daemon then gives the run driver a `RunTraces`); with traces off
this module is not imported and the driver checks one value (`traces is None`). The step attempt spans are
the workers' (tagent_client/run/tracing.py); each dispatched attempt carries its run span's W3C traceparent
(`Run.traceparent`), so they are children of it across processes, and pydantic-ai's LLM call spans are
theirs.

A run outlives a daemon; a span does not. So:

- A run's trace is chosen when it starts: its first span is the trace's root, and a "trace" entry in the
  run's history (trace_id, span_id, why) keeps it, durable with the run's first record. `tagent status RUN`
  shows that trace id.
- Each later daemon life that drives the run (after a restart; a resume, retry or rollback of an ended run)
  opens a new span for it in the same trace, a child of the first, and adds another "trace" entry.
- A run span ends when the run ends (its status, usage, and status ERROR if it failed), or, at a graceful
  stop, with outcome "daemon_stopped". A daemon killed with -9 loses its open spans: the spans of its
  attempts and of later lives still carry the trace id and name the lost span as parent.
- A child run's first span is a child of its parent run's span (same trace).
"""

from __future__ import annotations

from typing import Any

from tagent_client.run import tracing
from tagentd.runs.run import TRACE, Run
from tagentd.runs.table import RunTable


class RunTraces:
    """The open span of each run this daemon drives; every method runs on the daemon's loop."""

    def __init__(self, tracer: Any, runs: RunTable) -> None:
        self.tracer = tracer
        self.runs = runs
        self.open: dict[str, Any] = {}  # run id -> its span in this daemon life

    def opened(self, run: Run, why: str) -> None:
        """`run` starts being driven by this daemon (`why`: started, recovered, resumed): open its span.

        Adds a "trace" entry to its history; the caller makes sure the run is written (store.changed).
        """
        if run.id in self.open:
            return
        first = run.first_trace()
        if first is not None:
            context = tracing.remote_parent(*first)
        else:
            context = self._parent_run_context(run)
        start = run.state.created_at if why == "started" else None
        span = tracing.start_run_span(self.tracer, run.id, run.plan.name, context=context, start_time=start, why=why)
        self.open[run.id] = span
        run.traceparent = tracing.traceparent_of(span)
        trace_id, span_id = tracing.ids(span)
        run.audit("daemon", TRACE, trace_id=trace_id, span_id=span_id, why=why)

    def finished(self, run: Run) -> None:
        """The run ended: end its span with its status and usage."""
        span = self.open.pop(run.id, None)
        if span is not None:
            tracing.end_run_span(span, run.state)

    def close_all(self, outcome: str) -> None:
        """The daemon stops: end every open run span with `outcome` (the runs go on after the next start)."""
        for run_id, span in self.open.items():
            run = self.runs.live(run_id)
            if run is not None:
                tracing.end_run_span(span, run.state, outcome)
            else:
                span.end()
        self.open.clear()

    def _parent_run_context(self, run: Run) -> Any:
        """A child run's parent: its parent run's open span, if any (None: the run is a trace's root)."""
        link = run.source.parent
        span = self.open.get(link.parent_id) if link is not None else None
        return tracing.context_of(span) if span is not None else None
