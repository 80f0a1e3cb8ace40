"""tagentd: the daemon that runs TAgent pipelines durably, in parallel, in the background."""

__version__ = "0.1.0"
