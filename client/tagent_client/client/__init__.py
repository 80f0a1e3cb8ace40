"""Driving a running tagentd over its sockets: `Client`, `AsyncClient`, their broker methods, subscriptions."""

# Temporary (issue 12): tagentd/, tests/ and bench/ import these from tagent_client.client until they are rewritten.
from .sync import DEFAULT_TIMEOUT, FOLLOW_WAIT, WINDOW, AsyncClient, Client, RunHandle, split_spec  # noqa: F401
