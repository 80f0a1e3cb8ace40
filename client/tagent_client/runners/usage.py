"""Temporary old path of tagent_client.run.runners.usage (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from ..run.runners import usage

sys.modules[__name__] = usage
