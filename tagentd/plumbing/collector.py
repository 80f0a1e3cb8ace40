"""How the daemon and its workers run Python's cyclic garbage collector once they are up.

Both processes allocate and drop a few dozen containers per step (an attempt's task, context, events, the
messages of its dispatch and result); reference counting frees nearly all of them at once, and what a
collection of the youngest generation finds is mostly what is still in flight. With Python's default of one
such collection every 700 net allocations, a 1 -> 5,000 -> 1 fan-out made hundreds of them, and the older
generations' collections that follow, a few microseconds of CPU per step in each process. `tune()` makes it
one every YOUNG allocations: the same garbage is collected, later and in far fewer passes (cyclic garbage may
wait for up to YOUNG allocations: a few MB at most).
"""

from __future__ import annotations

import gc

#: Net container allocations between two collections of the youngest generation (Python's default: 700).
YOUNG = 10_000


def tune() -> None:
    """Collect the youngest generation every YOUNG allocations (the older generations' ratios stay Python's)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
