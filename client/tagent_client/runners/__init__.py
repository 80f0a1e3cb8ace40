"""Temporary old path of tagent_client.run.runners (issue 12): tagentd/ and tests/ import it until they are rewritten."""

from ..run.runners import Attempt, coerce_inputs, execute  # noqa: F401
