"""Temporary old path of tagent_client.define.conditions (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .define import conditions

sys.modules[__name__] = conditions
