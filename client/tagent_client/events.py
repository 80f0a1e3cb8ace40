"""Temporary old path of tagent_client.core.events (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .core import events

sys.modules[__name__] = events
