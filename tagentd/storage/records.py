"""Framed, checksummed msgspec records: the on-disk unit of every checkpoint file.

A frame is `MAGIC(2) | length(u32) | crc32(u32) | payload`, payload a msgpack
Struct. A reader stops at the first frame that is short, has a bad magic or a
bad checksum, and reports where, so a torn tail or a flipped byte is detected
and never silently loaded.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from tagentd.storage.failpoints import check_disk_space

MAGIC = b"TG"
HEADER = struct.Struct(">2sII")
MAX_RECORD = 256 * 1024 * 1024


class CorruptRecord(Exception):
    """A frame failed its length, magic or checksum check (offset = where the bad frame starts)."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt record at byte {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


def frame(payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_frames(data: bytes, path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, payload) for each good frame; raise CorruptRecord at the first bad one."""
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < HEADER.size:
            raise CorruptRecord(path, offset, f"truncated header ({end - offset} bytes)")
        magic, length, crc = HEADER.unpack_from(data, offset)
        if magic != MAGIC:
            raise CorruptRecord(path, offset, "bad magic")
        if length > MAX_RECORD:
            raise CorruptRecord(path, offset, f"implausible length {length}")
        start = offset + HEADER.size
        if start + length > end:
            raise CorruptRecord(path, offset, f"truncated payload ({end - start} of {length} bytes)")
        payload = data[start:start + length]
        if zlib.crc32(payload) != crc:
            raise CorruptRecord(path, offset, "checksum mismatch")
        yield offset, payload
        offset = start + length


def is_unwritten(data: bytes, offset: int) -> bool:
    """True if everything from `offset` to the end of `data` is zeros: reserve no record reached (or a file that
    grew whose bytes never reached the disk). No frame starts with a zero byte (MAGIC)."""
    return not data[offset:].strip(b"\0")


def written_frames(data: bytes, path: Path) -> Iterator[tuple[int, bytes]]:
    """`read_frames` of a segment's contents, ending where its unwritten reserve begins (the WAL segment
    open at a crash ends in zeros: tagentd.storage.wal); raises CorruptRecord at any other bad frame."""
    try:
        yield from read_frames(data, path)
    except CorruptRecord as exc:
        if not is_unwritten(data, exc.offset):
            raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, payload: bytes) -> None:
    """Replace `path` with one framed record: temp file, fsync, rename, fsync dir. Readers see old or new, never a mix.

    If the temp file cannot be written whole (a full disk), it is deleted: a failed write holds no space.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        check_disk_space(tmp)
        view = memoryview(frame(payload))
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_single(path: Path) -> bytes:
    """The payload of a one-record file; raises CorruptRecord if it is torn, corrupt or has trailing bytes."""
    data = path.read_bytes()
    frames = list(read_frames(data, path))
    if len(frames) != 1:
        raise CorruptRecord(path, 0, f"expected 1 record, found {len(frames)}")
    return frames[0][1]
