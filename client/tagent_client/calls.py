"""Temporary old path of tagent_client.client.calls (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .client import calls

sys.modules[__name__] = calls
