"""Temporary old path of tagent_client.define.export (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .define import export

sys.modules[__name__] = export
