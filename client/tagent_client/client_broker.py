"""Temporary old path of tagent_client.client.broker (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .client import broker

sys.modules[__name__] = broker
