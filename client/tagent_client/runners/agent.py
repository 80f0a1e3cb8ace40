"""Temporary old path of tagent_client.run.runners.agent (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from ..run.runners import agent

sys.modules[__name__] = agent
