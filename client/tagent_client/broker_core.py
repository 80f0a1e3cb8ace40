"""Temporary old path of tagent_client.core.broker (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .core import broker

sys.modules[__name__] = broker
