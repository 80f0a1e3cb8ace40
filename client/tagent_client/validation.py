"""Temporary old path of tagent_client.define.validation (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .define import validation

sys.modules[__name__] = validation
