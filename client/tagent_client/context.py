"""Temporary old path of tagent_client.run.context (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .run import context

sys.modules[__name__] = context
