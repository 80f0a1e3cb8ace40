"""How a stop is told: its default wait and the line naming the steps it waits for.

Shared by the daemon's side of a stop (stopping.py, which needs asyncio) and the commands that show
it (`tagentd stop` and `tagentd status`, cli_stop.py), which must start without loading asyncio.
"""

from __future__ import annotations

from typing import Any

STOP_WAIT_GRACEFUL = 10.0  # seconds a graceful stop waits for steps in flight, unless told otherwise


def waiting_line(waiting: list[dict[str, Any]]) -> str:
    """'2 steps: b (3.1 s), c (0.4 s)' for the steps a stop waits for (the longest-running first)."""
    steps = ", ".join(f"{w['step']} ({w['elapsed_s']:.1f} s)" for w in waiting)
    return f"{len(waiting)} step{'s' if len(waiting) != 1 else ''}: {steps}"
