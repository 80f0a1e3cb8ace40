"""The console scripts' start: load a command-line program with the garbage collector off.

A `tagent` or `tagentd` command is a short process whose start-up is almost all imports (click,
msgspec, zmq, the protocol), and imports make no garbage worth collecting: the collections they
trigger, and later ones that scan everything they loaded again, cost ~10-15% of a `tagent runs`.
So collection is off while the program loads; what it loaded is then frozen (never scanned again)
and collection is back on for the command itself (a `--follow` may run for hours).
"""

from __future__ import annotations

import gc
import importlib


def start(module: str) -> None:
    """Import `module` with collection off, freeze what is loaded, turn collection back on, run its main()."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        program = importlib.import_module(module)
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
    program.main()


def main() -> None:
    """`tagent`."""
    start("tagent_client.cli.main")
