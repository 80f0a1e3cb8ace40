"""Temporary old path of tagent_client.core.mailbox (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from .core import mailbox

sys.modules[__name__] = mailbox
