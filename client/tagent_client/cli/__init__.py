"""The `tagent` command."""

# Temporary (issue 12): tests/ and tagent_client.entry load these from tagent_client.cli until they are rewritten.
from .runs import build_params, cli, main, parse_param  # noqa: F401
