"""Unmap the file pages the worker template touched while importing, which its workers do not inherit.

Importing and warming up the agent runtime executes a lot of extension-module code once (pydantic-core's schema
building above all): ~4 MB of `.so` pages that stay mapped in the template, where nothing else maps them, so its
PSS counts them in full for as long as the daemon runs. Its workers do not inherit them (fork copies no page
table entries of a file mapping that has no private copies) and fault in what they run.

`unmap_clean_file_pages()` tells the kernel (madvise MADV_DONTNEED) that the template no longer needs the pages
of every read-only file mapping that holds only file pages. Nothing is lost: those pages are the file's own
bytes, they stay in the page cache, and a later touch maps them again (a minor fault). A mapping with private
copies (e.g. a library's relocated read-only data) is left alone: dropping those would revert them to the file.
Linux only; elsewhere, or if /proc or madvise is unavailable, it does nothing.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import sys
from collections.abc import Iterable, Iterator

MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)


def clean_file_mappings(smaps: Iterable[str]) -> Iterator[tuple[int, int]]:
    """(start, length) of each read-only file mapping in `smaps` (the lines of /proc/PID/smaps) that holds no
    private copy of a page (`Anonymous: 0 kB`) and has pages resident. Reads line by line: the file is ~1 MB."""
    mapping: tuple[int, int] | None = None
    resident = anonymous = 0
    for line in itertools.chain(smaps, ["0-0 ---p 0 0:0 0"]):  # the sentinel ends the last mapping
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and not fields[0].endswith(":"):
            if mapping is not None and resident and not anonymous:
                yield mapping
            start, end = (int(part, 16) for part in fields[0].split("-"))
            path = fields[5] if len(fields) > 5 else ""
            readonly_file = path.startswith("/") and "w" not in fields[1] and "s" not in fields[1]
            mapping = (start, end - start) if readonly_file else None
            resident = anonymous = 0
        elif fields and fields[0] == "Rss:":
            resident = int(fields[1])
        elif fields and fields[0] == "Anonymous:":
            anonymous = int(fields[1])


def unmap_clean_file_pages() -> int:
    """Drop this process's mappings of the clean file pages above; return how many mappings were advised."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        with open("/proc/self/smaps") as smaps:
            mappings = list(clean_file_mappings(smaps))  # all read before any is dropped
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return sum(madvise(start, length, MADV_DONTNEED) == 0 for start, length in mappings)  # EINVAL: locked
