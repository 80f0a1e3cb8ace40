"""Temporary old path of tagent_client.cli.live (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .cli import live

sys.modules[__name__] = live
