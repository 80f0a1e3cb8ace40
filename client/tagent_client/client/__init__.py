"""Driving a running tagentd over its sockets: `Client` (sync.py), `AsyncClient` (aio.py), their broker methods,
subscriptions. Import them from `tagent_client`."""
