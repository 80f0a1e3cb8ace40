"""tagent_client: define TAgent pipelines, run them in-process, or drive the tagentd daemon.

    from tagent_client import Pipeline, run_agent
    p = Pipeline("hello").step("greet", goal="Say hello")
    print(run_agent(p, model="test").final_output)
"""

from .client import AsyncClient, Client, RunHandle
from .conditions import when
from .context import StepContext
from .errors import PipelineValidationError, RetryableError, TagentError
from .local import RunConfig, run_agent, run_pipeline
from .pipeline import Pipeline, PipelineStep
from .plan import DependencyType, ExecutionMode
from .result import PipelineResult
from .state import RunStatus, StepStatus, Usage

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "DependencyType",
    "ExecutionMode",
    "Pipeline",
    "PipelineResult",
    "PipelineStep",
    "PipelineValidationError",
    "RetryableError",
    "RunConfig",
    "RunHandle",
    "RunStatus",
    "StepContext",
    "StepStatus",
    "TagentError",
    "Usage",
    "__version__",
    "run_agent",
    "run_pipeline",
    "when",
]
