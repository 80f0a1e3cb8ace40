"""Temporary old path of tagent_client.core.receivers (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .core import receivers

sys.modules[__name__] = receivers
