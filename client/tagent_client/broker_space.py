"""Temporary old path of tagent_client.core.space (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .core import space

sys.modules[__name__] = space
