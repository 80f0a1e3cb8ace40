"""Temporary old path of tagent_client.run.runners.broker_tools (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from ..run.runners import broker_tools

sys.modules[__name__] = broker_tools
