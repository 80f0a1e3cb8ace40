"""Temporary old path of tagent_client.run.runners.models (issue 12): tagentd/ and tests/ import it until they are rewritten."""

import sys

from ..run.runners import models

sys.modules[__name__] = models
