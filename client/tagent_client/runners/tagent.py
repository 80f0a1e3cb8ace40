"""Temporary old path of tagent_client.run.runners.tagent (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from ..run.runners import tagent

sys.modules[__name__] = tagent
