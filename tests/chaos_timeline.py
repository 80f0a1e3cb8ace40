"""The chaos test's timeline: its effects file, the kills in it, and the judgement of messages received again.

Every step of test_chaos.py appends `run step attempt words... time pid=N` (O_APPEND + fsync); the test
appends `KILL n kind ...` before the first signal of a kill and `KILLED n ...` once every victim is gone.
The time is the wall clock as tagentd.log writes it, so a failure can be lined up with the daemon's log.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

from conftest import DaemonProcess

from tagent_client import Client


class Timeline:
    """The effects file, in order: step lines `run step attempt words... time pid=N` and the test's kill lines.

    A kill is `KILL n kind ...` written before its first signal and `KILLED n ...` once every victim is gone:
    a victim may still write step lines between the two (it was running), and a run resumed after the crash
    may too (a worker's death is noticed at once), so only a line after `KILLED n` is surely after the crash
    and only one before `KILL n` surely before it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        text = self.path.read_text()
        return [raw.split(" ") for raw in text[: text.rfind("\n") + 1].splitlines()]  # a partial line is not read yet

    def step_lines(self) -> list[list[str]]:
        return [words for words in self.lines() if words[0] not in ("KILL", "KILLED")]

    def counts(self) -> collections.Counter[tuple[str, str]]:
        return collections.Counter((words[0], words[1]) for words in self.step_lines())

    def mark(self, *words: object) -> None:
        """Append the test's own line (`KILL n kind`, `KILLED n victims`), stamped like the steps' lines."""
        now = time.time()
        at = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (" ".join(map(str, [*words, at, f"pid={os.getpid()}"])) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def crashes(lines: list[list[str]]) -> list[tuple[int, int]]:
        """Each kill as (index of its `KILL` line, index of its `KILLED` line) in `lines`; one that found no
        worker to kill is no crash."""
        began = {words[1]: index for index, words in enumerate(lines) if words[0] == "KILL"}
        return [(began[words[1]], index) for index, words in enumerate(lines)
                if words[0] == "KILLED" and "workers=[]" not in words]


def unexplained_redeliveries(lines: list[list[str]]) -> list[tuple[str, int, int]]:
    """Messages received again although no lease ended between: (message id, line of the reception before, line now).

    docs/broker.md, "At-least-once, with acknowledgement": a message leased to an attempt is offered again only
    once that lease ended without an acknowledgement — the attempt failed (consume's only failure is giving up,
    which it records), its worker died or the daemon restarted, or it succeeded and a crash came before the
    commit of its acks. The test sees the last three only as its own kills: a kill explains a second reception
    if it began before that reception and ended after the first (which a victim may have made after `KILL`).
    """
    crashes = Timeline.crashes(lines)
    gave_up = {(w[0], w[2]): index for index, w in enumerate(lines) if len(w) > 3 and w[3] == "gave-up"}
    last: dict[str, tuple[int, tuple[str, str]]] = {}  # message id -> (line, (run, attempt)) of its last reception
    unexplained = []
    for index, words in enumerate(lines):
        if len(words) > 4 and words[3] == "recv":
            if words[4] in last:
                before, holder = last[words[4]]
                crashed = any(began < index and ended > before for began, ended in crashes)
                if not crashed and not before < gave_up.get(holder, -1) < index:
                    unexplained.append((words[4], before, index))
            last[words[4]] = (index, (words[0], words[2]))
    return unexplained


def acks_lost_without_crash(lines: list[list[str]], consumed: dict[str, set[str]], waiting: set[str]) -> list[str]:
    """Messages a completed step consumed (`consumed`: run -> its output's ids) that still wait in the mailbox
    although no kill ended after that run received them: a success's acks are written one commit after it, so
    only a crash in between may leave its messages in the mailbox."""
    received = {(w[0], w[4]): index for index, w in enumerate(lines) if len(w) > 4 and w[3] == "recv"}  # the last
    ends = [ended for _, ended in Timeline.crashes(lines)]
    lost = []
    for message in sorted(waiting & set().union(*consumed.values())):
        last = max(received[(run_id, message)] for run_id, ids in consumed.items() if message in ids)
        if not any(ended > last for ended in ends):
            lost.append(message)
    return lost


def why_received_again(client: Client, daemon: DaemonProcess, lines: list[list[str]], run_ids: set[str]) -> str:
    """What a failure about these runs needs: their timeline lines and kills, their events, and tagentd.log's
    restarts, warnings and lines about them (the log is appended to by every daemon of the test)."""
    out = ["timeline (line: words):"]
    out += [f"  {i}: {' '.join(w)}" for i, w in enumerate(lines) if w[0] in ("KILL", "KILLED") or w[0] in run_ids]
    for run_id in sorted(run_ids):
        out.append(f"events of run {run_id}:")
        out += [f"  {e.seq} {e.topic} {e.data}" for e in client.events(run_id).events]
    out.append("tagentd.log (every daemon): restarts, warnings, errors and these runs:")
    log = (daemon.state_dir / "tagentd.log").read_text(errors="replace").splitlines()
    out += [f"  {line}" for line in log
            if " ready: " in line or " WARNING " in line or " ERROR " in line or any(r in line for r in run_ids)]
    return "\n".join(out)
