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
import sys

#: Exit status of a command stopped by Ctrl-C while it loads: 128 + SIGINT, as once it runs (cli/common.py).
EXIT_INTERRUPTED = 130


def start(module: str) -> None:
    """Import `module` with collection off, freeze what is loaded, turn collection back on, run its main().

    Ctrl-C while the program loads (most of a short command's life) ends it with status 130 and no
    traceback of the import machinery, as it does once the command runs.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        program = importlib.import_module(module)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
    program.main()


def main() -> None:
    """`tagent`."""
    start("tagent_client.cli.main")
