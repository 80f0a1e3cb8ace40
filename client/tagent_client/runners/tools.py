"""Temporary old path of tagent_client.run.runners.tools (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from ..run.runners import tools

sys.modules[__name__] = tools
