"""The `tagentd` console script: tagentd.cli.main, loaded as tagent_client.entry says (collection off)."""

from __future__ import annotations

from tagent_client.entry import start


def main() -> None:
    start("tagentd.cli.main")
