"""Temporary old path of tagent_client.cli.render (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .cli import render

sys.modules[__name__] = render
