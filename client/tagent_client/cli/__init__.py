"""The `tagent` command."""

# Temporary (issue 12): tests/ load these from tagent_client.cli until they are rewritten.
from .main import cli, main  # noqa: F401
from .runs import build_params, parse_param  # noqa: F401
