"""Temporary old path of tagent_client.wire.protocol (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .wire import protocol

sys.modules[__name__] = protocol
