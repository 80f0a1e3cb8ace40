"""Temporary old path of tagent_client.wire.protocol_broker (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .wire import protocol_broker

sys.modules[__name__] = protocol_broker
