"""Exporting traces over OTLP/HTTP: the OpenTelemetry SDK set up once per process (the daemon, each worker).

Imported only when `otlp_endpoint` is set: with traces off no process imports the SDK or the exporter
(docs/operations.md, Traces). The SDK and the exporter are the `otel` extra (`pip install 'tagentd[otel]'`).

Spans leave in batches (the SDK's BatchSpanProcessor: a background thread, every 5 s or 512 spans; the
standard OTEL_BSP_* variables tune it), so a slow or absent collector never holds up a run: spans that
cannot be sent are dropped and the SDK logs why. `OTEL_EXPORTER_OTLP_HEADERS` (or
`OTEL_EXPORTER_OTLP_TRACES_HEADERS`) in the daemon's environment adds headers, an API key say: the workers
inherit it, and it stays out of tagentd.toml and command lines.
"""

from __future__ import annotations

import os
from typing import Any

from tagent_client.errors import ConfigError

TRACES_PATH = "/v1/traces"
FLUSH_MS = 3000  # how long a stopping process waits for its last spans to leave


def traces_url(endpoint: str) -> str:
    """The collector's OTLP/HTTP traces URL: `endpoint` (http://host:4318) plus /v1/traces unless it has it."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def start_exporting(endpoint: str, service: str) -> Any:
    """Make this process's tracer provider, export its spans to `endpoint` in batches, set it as the global
    one, and return it. ConfigError when the OpenTelemetry SDK is not installed."""
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(f"otlp_endpoint is set ({endpoint}) but the OpenTelemetry SDK is not installed ({exc}); "
                          f"install it with: pip install 'tagentd[otel]', or unset otlp_endpoint") from None
    resource = Resource.create({"service.name": service, "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    trace.set_tracer_provider(provider)
    return provider


def stop_exporting(provider: Any) -> None:
    """Send the spans still waiting (at most FLUSH_MS), then stop the exporter's thread."""
    provider.force_flush(FLUSH_MS)
    provider.shutdown()
