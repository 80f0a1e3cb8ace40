"""Temporary old path of tagent_client.run.context and .services (issue 12): tagentd/ and tests/ import it until they are rewritten."""

from .run.context import StepContext  # noqa: F401
from .run.services import LocalServices, RunServices  # noqa: F401
