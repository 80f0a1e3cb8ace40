"""Temporary old path of tagent_client.define.plan (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .define import plan

sys.modules[__name__] = plan
