"""The framing of every record on disk (tagentd/storage/records.py): `frame`, `read_frames`, `read_single`,
`write_atomic`, and the WAL's torn-tail rule (tagentd/storage/wal.py `is_torn_tail`).

Every kind of damage (a cut header or payload, bad magic, a flipped byte, an implausible length, extra or missing
records) is caught and reported at the offset where the bad record starts; only damage at the very end of a file
counts as a torn tail. Pure functions on bytes and temp files; the daemon-level consequences (a damaged file set
aside, the other runs going on) are in test_checkpoints.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tagentd.storage.records import HEADER, CorruptRecord, frame, read_frames, read_single, write_atomic
from tagentd.storage.wal import is_torn_tail

pytestmark = pytest.mark.timeout(180)


class TestFrames:
    """frame / read_frames / read_single: every kind of damage is caught at the right offset."""

    def test_several_frames_read_back_in_order_with_their_offsets(self, tmp_path: Path) -> None:
        payloads = [b"", b"one", b"x" * 1000]
        data = b"".join(frame(p) for p in payloads)
        offsets = [0, HEADER.size, 2 * HEADER.size + 3]
        assert list(read_frames(data, tmp_path)) == list(zip(offsets, payloads, strict=True))

    @pytest.mark.parametrize(("cut", "reason"), [(3, "truncated header"), (HEADER.size + 2, "truncated payload")])
    def test_a_cut_frame_is_reported_where_it_starts(self, tmp_path: Path, cut: int, reason: str) -> None:
        data = frame(b"good") + frame(b"second record")[:cut]
        good, error = self._read(data, tmp_path)
        assert good == [b"good"]
        assert error.offset == HEADER.size + 4 and error.reason.startswith(reason) and error.path == tmp_path

    def test_bad_magic_is_caught(self, tmp_path: Path) -> None:
        second = bytearray(frame(b"second"))
        second[0:2] = b"XX"
        good, error = self._read(frame(b"first") + bytes(second), tmp_path)
        assert good == [b"first"] and error.reason == "bad magic" and error.offset == HEADER.size + 5

    def test_a_flipped_payload_byte_fails_the_checksum(self, tmp_path: Path) -> None:
        first = bytearray(frame(b"first"))
        first[-1] ^= 0x01
        good, error = self._read(bytes(first) + frame(b"second"), tmp_path)
        assert good == [] and error.reason == "checksum mismatch" and error.offset == 0

    def test_an_implausible_length_is_caught_before_reading(self, tmp_path: Path) -> None:
        bad = HEADER.pack(b"TG", 2**31, 0) + b"x" * 10
        good, error = self._read(bad, tmp_path)
        assert good == [] and error.reason.startswith("implausible length")

    def test_write_atomic_and_read_single_round_trip_and_refuse_extra_bytes(self, tmp_path: Path) -> None:
        path = tmp_path / "one.ckpt"
        write_atomic(path, b"payload")
        assert read_single(path) == b"payload"
        assert not list(tmp_path.glob(".*.tmp"))
        path.write_bytes(path.read_bytes() + frame(b"another"))
        with pytest.raises(CorruptRecord, match="expected 1 record, found 2"):
            read_single(path)
        path.write_bytes(b"")
        with pytest.raises(CorruptRecord, match="found 0"):
            read_single(path)

    @pytest.mark.parametrize(("tail", "torn"), [
        (lambda f: f[:5], True),                             # short header
        (lambda f: f[:-3], True),                            # short payload
        (lambda f: b"\0" * len(f), True),                    # the length grew, the bytes never arrived
        (lambda f: f[:-1] + bytes([f[-1] ^ 1]), True),       # the last frame, exactly to the end, garbled
        (lambda f: f[:-1] + bytes([f[-1] ^ 1]) + frame(b"more"), False),  # a bad frame with good ones after it
    ])
    def test_only_damage_at_the_very_end_counts_as_a_torn_tail(self, tmp_path: Path, tail: Any, torn: bool) -> None:
        data = frame(b"good") + tail(frame(b"last record"))
        _, error = self._read(data, tmp_path)
        assert is_torn_tail(data, error) is torn

    @staticmethod
    def _read(data: bytes, path: Path) -> tuple[list[bytes], CorruptRecord]:
        good = []
        with pytest.raises(CorruptRecord) as caught:
            for _, payload in read_frames(data, path):
                good.append(payload)
        return good, caught.value
