"""Temporary old path of tagent_client.run.transcript and cli.transcript (issue 12): tagentd/ and tests/ import it until they are rewritten."""

from .cli.transcript import render  # noqa: F401
from .run.transcript import MAX_CHARS, REDACTED, SECRET_KEYS, from_messages, scrub  # noqa: F401
