"""Temporary old path of tagent_client.run.outputs (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .run import outputs

sys.modules[__name__] = outputs
