"""`StepContext`: what a running step sees of its run.

The same class serves in-process runs and daemon workers; only the `RunServices`
behind it differ (`services.LocalServices` in-process, a daemon-backed one in the worker).
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .additions import Additions
from .breakers import StepBreaker
from .communicator_port import StepCommunicators, StepPort
from .context_broker import BrokerAbilities
from .dependency import DependencyAbilities
from .memory import PipelineMemory

if TYPE_CHECKING:
    from ..communication.communicator import PipelineCommunicator
    from ..define.pipeline import Pipeline
    from ..define.plan import StepSpec
    from ..define.step import PipelineStep
    from .services import RunServices

DEPENDENCY_PREFIX = "dependency_"


def constraints_of(pipeline: Pipeline, step: PipelineStep | StepSpec) -> list[str]:
    """A step's constraints as its context and its agent's prompt see them: its own, then the pipeline's."""
    return [*step.constraints, *pipeline.global_constraints]


class _StepLog(logging.LoggerAdapter):
    """A logger whose lines land in the run's log (and the process's own logging)."""

    def __init__(self, services: RunServices, run_id: str, step: str) -> None:
        super().__init__(logging.getLogger(f"tagent.step.{step}"), {"run_id": run_id, "step": step})
        self._services = services
        self._run_id = run_id
        self._step = step

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        text = str(msg) % args if args else str(msg)
        self._services.log(self._run_id, self._step, level, text)
        super().log(level, text, **kwargs)


def _as_is(name: str, value: Any) -> Any:
    return value


class StepContext(BrokerAbilities, DependencyAbilities):
    """The first argument (`ctx`) of a function step; agent steps get the same abilities as tools.

    `attempt` is 1 on the first try and grows with every retry or crash-recovery re-run;
    `inputs` maps each dependency to its output; `item` / `item_index` are set for
    PARALLEL_MERGE items; `trigger` holds the event that started a triggered run.
    Messaging, events and shared spaces: see `context_broker.BrokerAbilities`; the documents'
    `PipelineCommunicator` over them is `communicator`; circuit breakers: `breaker`.

    The design documents' context fields are here too, the same in-process and in a worker:
    `pipeline_name`, `step_name`, `execution_attempt` (= `attempt`), `constraints` (the step's,
    then the pipeline's global ones) and `dependency_<name>` for each dependency (= `inputs[name]`;
    None for a SOFT dependency that has not completed).

    `await ctx.dependency(name, timeout=None)` waits inside the step for dependency `name` (a SOFT one the
    step started without): its output once it has COMPLETED, None if it ended otherwise, TimeoutError after
    `timeout` seconds, NotFound for a name that is no dependency; while it waits, the step's slot does not
    count against `max_concurrent_steps` (see `dependency.DependencyAbilities`). A sync step calls it as `asyncio.run(ctx.dependency(name))`.
    `decode(name, output)` types a dependency's output as `inputs` are typed (by its output schema).
    """

    def __init__(
        self,
        *,
        services: RunServices,
        run_id: str,
        pipeline: str,
        step_name: str,
        attempt: int,
        params: Mapping[str, Any],
        shared: Mapping[str, Any],
        inputs: Mapping[str, Any],
        item: Any = None,
        item_index: int | None = None,
        trigger: Any = None,
        task: str | None = None,
        constraints: Sequence[str] = (),
        decode: Callable[[str, Any], Any] = _as_is,
        definition: Pipeline | None = None,
    ) -> None:
        self.run_id = run_id
        self.pipeline = pipeline
        self.step_name = step_name
        self.attempt = attempt
        self.params = dict(params)
        self.shared = dict(shared)
        self.inputs = dict(inputs)
        self.item = item
        self.item_index = item_index
        self.trigger = trigger
        self.constraints = list(constraints)
        self.task = task or (step_name if item_index is None else f"{step_name}[{item_index}]")
        self._services = services
        self._decode = decode
        self._definition = definition
        self._communicators: StepCommunicators | None = None

    # What most steps never touch is made on first use: a no-op step's context costs a few attribute writes.

    @cached_property
    def memory(self) -> PipelineMemory:
        """The run's memory (`await ctx.memory.save(key, value)`, `get`, ...)."""
        return PipelineMemory(self._services, self.run_id, self.pipeline, self.space)

    @cached_property
    def log(self) -> logging.LoggerAdapter:
        """A logger whose lines land in the run's log (`ctx.log.info(...)`)."""
        return _StepLog(self._services, self.run_id, self.step_name)

    @cached_property
    def additions(self) -> Additions:
        """The steps this attempt added (`add_step`)."""
        return Additions(self._definition, self.step_name)

    @property
    def added(self) -> list[StepSpec]:
        """The specs of the steps this attempt added, in order: what its result carries ([] if none)."""
        additions = self.__dict__.get("additions")
        return additions.specs if additions is not None else []

    @property
    def communicator(self) -> PipelineCommunicator:
        """The design documents' PipelineCommunicator, speaking for this step's pipeline (its event
        subscriptions end with this attempt at the latest)."""
        if self._communicators is None:
            port = StepPort(call=self._call, subscribe=self._services.subscribe, receive=self.receive,
                            message_id=self.next_message_id, events_prefix=f"{self.run_id}/{self.task}")
            self._communicators = StepCommunicators(port, self.pipeline)
        return self._communicators.communicator

    def end_attempt(self) -> None:
        """The attempt is over: close what lives only as long as it (the communicator's subscriptions)."""
        if self._communicators is not None:
            self._communicators.close_all()

    def add_step(self, name: str, goal: str | None = None, **options: Any) -> None:
        """Add a step to this run, with the same arguments as `Pipeline.step` (run/additions.py says which
        work here). Checked at once (DynamicStepError says what is wrong); the run gets the step when this
        step completes, durably with its completion; a retried attempt's additions replace the earlier one's.
        It may depend on this step, on other steps of the run and on steps added before it."""
        self.additions.add(name, goal, options)

    @property
    def pipeline_name(self) -> str:
        """The run's pipeline (the documents' name for `pipeline`)."""
        return self.pipeline

    @property
    def execution_attempt(self) -> int:
        """This attempt's number, 1 on the first try (the documents' name for `attempt`)."""
        return self.attempt

    def __getattr__(self, name: str) -> Any:
        """`ctx.dependency_<name>`: the output of dependency `<name>`, as in `inputs`."""
        if name.startswith(DEPENDENCY_PREFIX):
            inputs = self.__dict__.get("inputs", {})
            dep = name[len(DEPENDENCY_PREFIX):]
            if dep in inputs:
                return inputs[dep]
            raise AttributeError(f"step {self.__dict__.get('step_name')!r} has no dependency {dep!r} "
                                 f"(its dependencies: {', '.join(sorted(inputs)) or 'none'})")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def breaker(self, name: str, *, ignore: tuple[type[BaseException], ...] = ()) -> StepBreaker:
        """The circuit breaker `name`, shared by every step of every run (through the daemon: of all workers).

        `async with ctx.breaker("payments"): ...` (or as a decorator of an async function) raises CircuitOpen
        (retryable) at once while the breaker is open; an exception inside counts as a failure, except those in
        `ignore`. Configured by `[breakers.NAME]` in tagentd.toml (docs/agents.md, "Circuit breakers").
        """
        return StepBreaker(self._services.breakers, name, ignore)

    def progress(self, fraction: float | str | None = None, message: str | None = None) -> None:
        """Report progress (best effort: shown by `--follow`, never stored): `ctx.progress(0.5, "half done")`,
        `ctx.progress(0.5)`, or a note alone, `ctx.progress("fetching the feed")`.

        Raises TypeError when `fraction` is not a number or `message` not a string: such a note could not
        reach the daemon, and nothing would say so.
        """
        if isinstance(fraction, str) and message is None:
            fraction, message = None, fraction
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
                raise TypeError(f"ctx.progress(fraction, message): fraction must be a number (0.5 for half done) "
                                f"or None, not {fraction!r}")
            fraction = float(fraction)
        if message is not None and not isinstance(message, str):
            raise TypeError(f"ctx.progress(fraction, message): message must be a string, not {message!r}")
        self._services.progress(self.run_id, self.step_name, fraction, message)

    def __repr__(self) -> str:
        return f"StepContext(run_id={self.run_id!r}, step={self.step_name!r}, attempt={self.attempt})"


def __getattr__(name: str) -> Any:
    """`Memory` is the old name of `PipelineMemory`: deprecated, removed in the next release."""
    if name == "Memory":
        warnings.warn("tagent_client.run.context.Memory is deprecated: use tagent_client.PipelineMemory",
                      DeprecationWarning, stacklevel=2)
        return PipelineMemory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
