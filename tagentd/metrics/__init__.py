"""The daemon's Prometheus metrics: a registry of its own, instruments the hot paths feed, scrape-time collectors.

See `instruments.Metrics`, and docs/operations.md (Metrics) for every series.
"""
