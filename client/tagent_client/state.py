"""Temporary old path of tagent_client.core.state (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .core import state

sys.modules[__name__] = state
