"""Temporary old path of tagent_client.client.subscription (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .client import subscription

sys.modules[__name__] = subscription
