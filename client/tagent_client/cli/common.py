"""What every `tagent` command shares: the session (its connection to the daemon), `--json` and JSON output.

Output contract: with --json, stdout carries nothing but JSON (one document; or one
object per line for streams), and anything else goes to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import msgspec

from ..client.sync import Client
from ..core.result import to_builtins

__all__ = ["EXIT_INTERRUPTED", "Session", "emit_json", "json_option", "pass_session"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as for every `tagent` command stopped with Ctrl-C


def emit_json(data: Any, *, line: bool = False) -> None:
    """JSON on stdout: indented, or compact on one line for streams."""
    encoded = msgspec.json.encode(to_builtins(data))
    click.echo((encoded if line else msgspec.json.format(encoded, indent=2)).decode())


class Session:
    """The command's connection, made on first use (so `--help` never needs a daemon), and what it opened."""

    def __init__(self, runtime_dir: Path | None) -> None:
        self.runtime_dir = runtime_dir
        self._client: Client | None = None
        self._owned: list[Any] = []

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.runtime_dir)
        return self._client

    def own(self, resource: Any) -> Any:
        """Close `resource` (a subscription, ...) when the command ends, before the connection."""
        self._owned.append(resource)
        return resource

    def close(self) -> None:
        for resource in reversed(self._owned):
            resource.close()
        if self._client is not None:
            self._client.close()


pass_session = click.make_pass_decorator(Session)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON only (nothing else on stdout).")
