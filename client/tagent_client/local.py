"""Temporary old path of tagent_client.run.local (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .run import local

sys.modules[__name__] = local
