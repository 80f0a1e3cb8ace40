"""Temporary old path of tagent_client.run.transcript (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .run import transcript

sys.modules[__name__] = transcript
