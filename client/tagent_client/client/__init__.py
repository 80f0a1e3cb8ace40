"""Driving a running tagentd over its sockets: `Client`, `AsyncClient`, their broker methods, subscriptions."""

# Temporary (issue 12): tagentd/, tests/ and bench/ import these from tagent_client.client until they are rewritten.
from .aio import WINDOW, AsyncClient  # noqa: F401
from .base import DEFAULT_TIMEOUT, FOLLOW_WAIT  # noqa: F401
from .calls import RunHandle, split_spec  # noqa: F401
from .sync import Client  # noqa: F401
