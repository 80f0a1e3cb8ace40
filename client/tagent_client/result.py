"""Temporary old path of tagent_client.core.result (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .core import result

sys.modules[__name__] = result
