"""Temporary old path of tagent_client.wire.paths (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .wire import paths

sys.modules[__name__] = paths
