"""Temporary old path of tagent_client.run.context_broker (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .run import context_broker

sys.modules[__name__] = context_broker
