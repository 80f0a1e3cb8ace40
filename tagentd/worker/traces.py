"""A worker's traces: the step attempt spans (and pydantic-ai's LLM call spans under them), exported over OTLP.

Made only when the daemon passes `--otlp-endpoint` (its `otlp_endpoint` setting); otherwise the worker has
no `WorkerTraces`, imports no OpenTelemetry SDK, and runs each task without a span. Each task's
`RunTask.traceparent` names its run's span in the daemon: the attempt's span is its child
(tagent_client/run/tracing.py makes the spans).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tagent_client.run import tracing
from tagent_client.run.llm import LLMRuntime
from tagentd.plumbing import otlp


@dataclass
class WorkerTraces:
    provider: Any
    tracer: Any

    @classmethod
    def start(cls, endpoint: str, llm: LLMRuntime) -> WorkerTraces:
        """Export this worker's spans to `endpoint`; agent steps run through `llm` get LLM call spans."""
        provider = otlp.start_exporting(endpoint, "tagentd-worker")
        llm.tracer_provider = provider
        return cls(provider=provider, tracer=provider.get_tracer(tracing.SCOPE))

    @staticmethod
    def parent(traceparent: str | None) -> Any:
        """The context the task's `traceparent` names (its run's span); None: the attempt starts a trace."""
        return tracing.parent_context(traceparent)

    def stop(self) -> None:
        otlp.stop_exporting(self.provider)
