"""Temporary old path of tagent_client.core.engine and .rules (issue 12): tagentd/ and tests/ import it until they are rewritten."""

from .core.engine import RunMachine  # noqa: F401
from .core.rules import backoff_delay, gate_is_valid, task_id  # noqa: F401
