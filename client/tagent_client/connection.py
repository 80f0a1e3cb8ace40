"""Temporary old path of tagent_client.client.connection (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .client import connection

sys.modules[__name__] = connection
