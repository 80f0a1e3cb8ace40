"""Temporary old path of tagent_client.define.binding (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .define import binding

sys.modules[__name__] = binding
