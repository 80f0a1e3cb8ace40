"""Temporary old path of tagent_client.run.runners (issue 12): tagentd/ and tests/ import it until they are rewritten."""

from ..run.runners.attempt import Attempt  # noqa: F401
from ..run.runners.execute import coerce_inputs, execute  # noqa: F401
