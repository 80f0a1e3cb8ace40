"""Temporary old path of tagent_client.core.broker and .broker_records (issue 12): tagentd/ and tests/ import it until they are rewritten."""

from .core.broker import *  # noqa: F403
from .core.broker import MAX_DELIVERIES, BrokerCore, CoreSnapshot, attempt_error  # noqa: F401
from .core.broker_records import *  # noqa: F403
from .core.broker_records import CoreRecord, UNSYNCED, Record  # noqa: F401
