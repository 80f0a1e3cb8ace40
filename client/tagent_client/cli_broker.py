"""Temporary old path of tagent_client.cli.broker (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .cli import broker

sys.modules[__name__] = broker
