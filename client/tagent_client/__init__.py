"""tagent_client: define TAgent pipelines, run them in-process, or drive the tagentd daemon.

    from tagent_client import Pipeline, run_agent
    p = Pipeline("hello").step("greet", goal="Say hello")
    print(run_agent(p, model="test").final_output)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .client.aio import AsyncClient
    from .client.calls import RunHandle
    from .client.sync import Client
    from .communication.blocking import SyncPipelineCommunicator
    from .communication.communicator import PipelineCommunicator
    from .communication.envelopes import PipelineEvent, PipelineMessage
    from .core.result import PipelineResult, TokenUsage
    from .core.state import RunStatus, StepStatus, Usage
    from .define.conditions import when
    from .define.pipeline import Pipeline, PipelineWarning
    from .define.plan import DependencyType, ExecutionMode
    from .define.step import PipelineStep
    from .errors import (
        PipelineDeadlockError,
        PipelineValidationError,
        RetryableError,
        StepExecutionError,
        TagentError,
    )
    from .run.agent_api import AgentResult, run_agent
    from .run.config import RunConfig
    from .run.context import StepContext
    from .run.local import run_pipeline
    from .run.memory import PipelineMemory
    from .run.space import SharedMemorySpace
    from .wire.protocol_broker import PipelineInfo

#: Public name -> the module that defines it. Loaded on first use, so `tagent runs`
#: does not pay for pydantic, asyncio and the engine just to print a table.
_EXPORTS = {
    "AsyncClient": "client.aio", "Client": "client.sync", "RunHandle": "client.calls",
    "when": "define.conditions",
    "PipelineCommunicator": "communication.communicator", "SyncPipelineCommunicator": "communication.blocking",
    "PipelineMessage": "communication.envelopes", "PipelineEvent": "communication.envelopes",
    "PipelineInfo": "wire.protocol_broker",
    "StepContext": "run.context", "PipelineMemory": "run.memory", "SharedMemorySpace": "run.space",
    "PipelineValidationError": "errors", "RetryableError": "errors", "TagentError": "errors",
    "PipelineDeadlockError": "errors", "StepExecutionError": "errors",
    "RunConfig": "run.config", "run_agent": "run.agent_api", "run_pipeline": "run.local",
    "Pipeline": "define.pipeline", "PipelineWarning": "define.pipeline", "PipelineStep": "define.step",
    "AgentResult": "run.agent_api",
    "DependencyType": "define.plan", "ExecutionMode": "define.plan",
    "PipelineResult": "core.result", "TokenUsage": "core.result",
    "RunStatus": "core.state", "StepStatus": "core.state", "Usage": "core.state",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tagent_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value



__all__ = [
    "AgentResult",
    "AsyncClient",
    "Client",
    "DependencyType",
    "ExecutionMode",
    "Pipeline",
    "PipelineCommunicator",
    "PipelineDeadlockError",
    "PipelineEvent",
    "PipelineInfo",
    "PipelineMemory",
    "PipelineMessage",
    "PipelineResult",
    "PipelineStep",
    "PipelineValidationError",
    "PipelineWarning",
    "RetryableError",
    "RunConfig",
    "RunHandle",
    "RunStatus",
    "SharedMemorySpace",
    "StepContext",
    "StepExecutionError",
    "StepStatus",
    "SyncPipelineCommunicator",
    "TagentError",
    "TokenUsage",
    "Usage",
    "__version__",
    "run_agent",
    "run_pipeline",
    "when",
]
