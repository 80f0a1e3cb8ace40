"""Temporary old path of tagent_client.run.llm (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .run import llm

sys.modules[__name__] = llm
