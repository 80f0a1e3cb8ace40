"""Temporary old path of tagent_client.run.broker_local (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .run import broker_local

sys.modules[__name__] = broker_local
