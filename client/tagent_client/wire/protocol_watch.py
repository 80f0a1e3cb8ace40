"""The answer to the control protocol's `watch` request (`tagent watch`): the watched folders and their files.

protocol.py re-exports these Structs; docs/protocol.md and docs/watching.md describe them.
"""

# Annotations stay real objects (no `from __future__ import annotations`): msgspec would otherwise
# eval each one as a string when the decoders are built.

import msgspec


class WatchFolder(msgspec.Struct, kw_only=True):
    """A watched folder: "watching", "missing" (watched again once it exists) or "refused" (`message` says why)."""

    path: str
    status: str
    message: str | None = None
    recursive: bool = False


class WatchedFile(msgspec.Struct, kw_only=True):
    """A pipeline file in a watched folder and what became of its latest content.

    `status`: "loading", "started" (`run_id`), "registered" (it declares triggers), "error" (`message`:
    one line `path:line: reason`; `line`) or "skipped" (`message` says why). `at`: when the status was
    reached; `checked_at`: when the file was last read.
    """

    path: str
    folder: str
    status: str
    hash: str | None = None
    run_id: str | None = None
    message: str | None = None
    line: int | None = None
    at: float
    checked_at: float


class WatchInfo(msgspec.Struct, kw_only=True):
    """The answer to GetWatch. `settling`: paths with recent events, waiting to be complete."""

    folders: list[WatchFolder]
    files: list[WatchedFile]
    settling: list[str] = []
    on_change: str = "keep"
    on_delete: str = "ignore"
    problems: list[str] = []
