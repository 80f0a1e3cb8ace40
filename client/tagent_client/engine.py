"""Temporary old path of tagent_client.core.engine (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .core import engine

sys.modules[__name__] = engine
