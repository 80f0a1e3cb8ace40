"""Temporary old path of tagent_client.define.pipeline (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .define import pipeline

sys.modules[__name__] = pipeline
