"""Temporary old path of tagent_client.define.document (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .define import document

sys.modules[__name__] = document
