"""Running the documentation as a new user would: every code block of a markdown file, in order.

Each fenced block (```lang ... ```, also indented inside a list) is one of:

- ```python: run in a fresh Python process kept for the whole file (one namespace,
  so a block may use what an earlier block of the same file defined), with
  TAGENT_MODEL=test, in the sandbox described below.
- a block with `$ ` lines: each such line (plus `\\`-continued lines) is a shell
  command, run with bash in order (what it `export`s and where it `cd`s carry over to
  later commands of the file); the other lines are its output and are not checked.
  The word `RUN` in a command is replaced by the newest run's id. Each command must
  exit 0 — the block's last one N with `<!-- docs-test: exit N -->` before the block.
- ```toml: a pipeline document (it has `[[steps]]`) is loaded and run in-process in the
  Python process above; any other TOML is a tagentd.toml, checked with
  `tagentd config show --config FILE`.
- marked `<!-- docs-test: skip (reason) -->` on the line before the block (blank lines
  may come between): not run, and counted. Any other block is an error, so a block
  cannot be added without being run or marked.

The sandbox (one per file): a temp dir holding HOME (so `~/.local/share/tagentd/pipelines`
is the daemon's watched folder, `~/.config/tagentd/tagentd.toml` its config), the XDG
runtime dir, TMPDIR, a copy of `pipelines/` and `systemd/` as the working directory, and
`tagent` / `tagentd` on PATH running this checkout. Before each block that talks to a
daemon (commands, or Python using `Client`), the harness starts one with `tagentd start`
if none runs — except before a block that itself begins with `tagentd start`, where it
stops a running one. At the end it stops the daemon and fails if any process of the
sandbox is left.

To document a new command: write it as a `$ ` line in a block; nothing here changes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import processes_using

REPO = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT = 120.0
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[\w-]*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<what>\w[\w-]*)\s*(?P<arg>.*?)\s*-->\s*$")
RUN_WORD = re.compile(r"\bRUN\b")
DAEMON_PYTHON = re.compile(r"\b(Async)?Client\(")
COPIED = ("pipelines", "systemd")


class DocsError(AssertionError):
    """A documented block failed; the message says where (file:line), what ran and its output."""


@dataclasses.dataclass
class Block:
    """One fenced code block of a markdown file."""

    file: Path
    line: int  # 1-based line of the opening fence
    info: str
    text: str
    directive: tuple[str, str] | None = None  # ("skip", "(reason)") or ("exit", "9")

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(REPO) if self.file.is_relative_to(REPO) else self.file.name}:{self.line}"

    @property
    def kind(self) -> str:
        """skip, python, shell, pipeline-toml, config-toml, or unknown (unmarked and not runnable)."""
        if self.directive is not None and self.directive[0] == "skip":
            return "skip"
        if self.info == "python":
            return "python"
        if self.commands():
            return "shell"
        if self.info == "toml":
            return "pipeline-toml" if re.search(r"^\s*\[\[steps\]\]", self.text, re.M) else "config-toml"
        return "unknown"

    def commands(self) -> list[str]:
        """The `$ ` lines, each with its `\\`-continued lines joined."""
        out: list[str] = []
        lines = iter(self.text.splitlines())
        for line in lines:
            if not line.startswith("$ "):
                continue
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + " " + next(lines, "").strip()
            out.append(command)
        return out

    def needs_daemon(self) -> bool:
        if self.kind == "shell":
            return any(_program(c) in ("tagent", "tagentd") or "tagent " in c for c in self.commands())
        return self.kind == "python" and bool(DAEMON_PYTHON.search(self.text))

    def starts_daemon(self) -> bool:
        """Whether the block's first command is `tagentd start` (with any VAR=value in front)."""
        commands = self.commands() if self.kind == "shell" else []
        return bool(commands) and _program(commands[0]) == "tagentd" and _words(commands[0])[1:2] == ["start"]


def _words(command: str) -> list[str]:
    """The command's words without its `# comment` and without leading VAR=value assignments."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        words = command.split("#")[0].split()
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        words.pop(0)
    return words


def _program(command: str) -> str:
    """The program a command line runs."""
    words = _words(command)
    return words[0] if words else ""


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, in order, with the directive that precedes it."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent = len(m["indent"])
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        blocks.append(Block(path, i + 1, m["info"], "\n".join(body) + "\n", _directive(lines, i)))
        i = j + 1
    return blocks


def _directive(lines: list[str], fence: int) -> tuple[str, str] | None:
    k = fence - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    m = DIRECTIVE.match(lines[k]) if k >= 0 else None
    return (m["what"], m["arg"]) if m else None


# -- the sandbox ---------------------------------------------------------------------------


KERNEL = r'''
import contextlib, io, json, os, sys, traceback
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # whatever a block's subprocesses print cannot garble the replies
namespace = {"__name__": "__docs__"}
for request in sys.stdin:
    code = json.loads(request)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code["source"], code["where"], "exec"), namespace)
        reply = {"ok": True, "output": out.getvalue()}
    except BaseException:
        reply = {"ok": False, "output": out.getvalue(), "error": traceback.format_exc()}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
'''

PIPELINE_DOCUMENT = '''
from tagent_client import Pipeline, run_agent
_document = Pipeline.from_toml({text!r})
_result = run_agent(_document)
assert _result.success, _result.error
'''


class Sandbox:
    """A new user's machine in one temp dir; see the module docstring. Use as a context manager."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="docs"))  # short: socket paths must stay < 107 bytes
        self.home = self.root / "home"
        self.cwd = self.root / "checkout"
        self.runtime_dir = self.root / "xr" / "tagentd"
        for d in (self.home, self.cwd, self.root / "xr", self.root / "tmp", self.root / "bin"):
            d.mkdir(parents=True, mode=0o700)
        for name in COPIED:
            shutil.copytree(REPO / name, self.cwd / name)
        for name, module in (("tagent", "tagent_client.cli"), ("tagentd", "tagentd")):
            shim = self.root / "bin" / name
            shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
            shim.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGENTD_", "TAGENT_", "XDG_"))}
        env.pop("NOTIFY_SOCKET", None)
        env.update(
            HOME=str(self.home), TMPDIR=str(self.root / "tmp"), XDG_RUNTIME_DIR=str(self.root / "xr"),
            PATH=f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}", TAGENT_MODEL="test",
            PYTHONPATH=os.pathsep.join([str(REPO / "client"), str(REPO)]),
        )
        self.env = env
        self._kernel: subprocess.Popen[str] | None = None
        self.skipped: list[Block] = []

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(raise_leftovers=exc[0] is None)

    # -- running blocks -------------------------------------------------------------------

    def run_file(self, path: Path) -> None:
        """Run every block of a markdown file in order; DocsError at the first that fails."""
        for block in read_blocks(path):
            self.run_block(block)

    def run_block(self, block: Block) -> None:
        kind = block.kind
        if kind == "unknown":
            raise DocsError(f"{block.where}: a ```{block.info} block that is neither runnable (python, toml, `$ ` "
                            f"commands) nor marked <!-- docs-test: skip (reason) -->")
        if kind == "skip":
            self.skipped.append(block)
            return
        if block.starts_daemon():
            self.stop_daemon()
        elif block.needs_daemon():
            self.ensure_daemon()
        if kind == "python":
            self.run_python(block.text, block.where)
        elif kind == "pipeline-toml":
            self.run_python(PIPELINE_DOCUMENT.format(text=block.text), block.where)
        elif kind == "config-toml":
            config = self.root / "tmp" / "docs-config.toml"
            config.write_text(block.text)
            self.run_command(f"tagentd config show --config {config}", block)
        else:
            commands = block.commands()
            expected = int(block.directive[1]) if block.directive and block.directive[0] == "exit" else 0
            for n, command in enumerate(commands, 1):
                self.run_command(command, block, expected if n == len(commands) else 0)

    def run_command(self, command: str, block: Block, expected: int = 0) -> subprocess.CompletedProcess[str]:
        """Run one `$ ` line with bash; what it exports and where it `cd`s carry over to the next."""
        shown = command
        if RUN_WORD.search(_code_part(command)):
            command = RUN_WORD.sub(self.newest_run(block, command), command)
        state = self.root / "tmp" / "shell-state"
        script = f'{command}\n__docs_rc=$?\nenv -0 > "{state}.env"; pwd > "{state}.cwd"\nexit $__docs_rc\n'
        proc = subprocess.Popen(["bash", "--noprofile", "--norc", "-c", script], cwd=self.cwd, env=self.env,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise DocsError(f"{block.where}: `$ {shown}` did not end within {COMMAND_TIMEOUT:g} s\n"
                            f"stdout:\n{out}\nstderr:\n{err}") from None
        if proc.returncode != expected:
            ran = f" (ran: {command})" if command != shown else ""
            raise DocsError(f"{block.where}: `$ {shown}`{ran} exited {proc.returncode}, expected {expected}\n"
                            f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
        if Path(f"{state}.env").exists():
            pairs = Path(f"{state}.env").read_bytes().decode(errors="replace").split("\0")
            self.env = dict(p.split("=", 1) for p in pairs if "=" in p and not p.startswith(("_=", "__docs_rc=")))
            self.cwd = Path(Path(f"{state}.cwd").read_text().strip())
        return subprocess.CompletedProcess(command, proc.returncode, out, err)

    def run_python(self, source: str, where: str) -> None:
        kernel = self._python()
        assert kernel.stdin is not None and kernel.stdout is not None
        kernel.stdin.write(json.dumps({"source": source, "where": where}) + "\n")
        kernel.stdin.flush()
        ready, _, _ = select.select([kernel.stdout], [], [], COMMAND_TIMEOUT)
        line = kernel.stdout.readline() if ready else ""
        if not line:
            kernel.kill()
            raise DocsError(f"{where}: the python block did not finish within {COMMAND_TIMEOUT:g} s (or its "
                            f"interpreter died); its stderr:\n{self._kernel_log()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise DocsError(f"{where}: the python block failed:\n{reply['error']}\noutput:\n{reply['output']}")

    def _python(self) -> subprocess.Popen[str]:
        if self._kernel is None:
            log = open(self.root / "tmp" / "python.log", "w")  # noqa: SIM115 - closed with the process
            self._kernel = subprocess.Popen([sys.executable, "-c", KERNEL], cwd=self.cwd, env=self.env, text=True,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
            log.close()
        return self._kernel

    def _kernel_log(self) -> str:
        path = self.root / "tmp" / "python.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # -- the daemon -----------------------------------------------------------------------

    def daemon_running(self) -> bool:
        from tagentd.plumbing.lock import is_locked

        return self.runtime_dir.exists() and is_locked(self.runtime_dir)

    def ensure_daemon(self) -> None:
        if not self.daemon_running():
            self.run_command("tagentd start", Block(Path("harness"), 0, "", ""))

    def stop_daemon(self) -> None:
        if self.daemon_running():
            self.run_command("tagentd stop --fast", Block(Path("harness"), 0, "", ""))

    def newest_run(self, block: Block, command: str) -> str:
        from tagent_client.client.sync import Client

        with Client(runtime_dir=self.runtime_dir, timeout=10) as client:
            runs = client.runs(limit=1)
        if not runs:
            raise DocsError(f"{block.where}: `$ {command}` uses RUN, but the daemon has no run yet")
        return runs[0].run_id

    # -- the end --------------------------------------------------------------------------

    def close(self, raise_leftovers: bool = True) -> None:
        """Stop the Python process and the daemon; fail if anything else of the sandbox still runs."""
        if self._kernel is not None:
            self._kernel.kill()
            self._kernel.wait()
        try:
            self.stop_daemon()
        except DocsError:
            pass
        deadline = time.monotonic() + 10
        left = processes_using(self.root)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)  # ok-sleep: polling interval of a deadline-bounded wait for exits
            left = processes_using(self.root)
        described = [_cmdline(pid) for pid in left]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        if left and raise_leftovers:
            raise DocsError("documented commands left processes running: " + "; ".join(described))


def _code_part(command: str) -> str:
    """The command without its trailing `# comment` (quotes respected)."""
    try:
        return " ".join(shlex.split(command, comments=True))
    except ValueError:
        return command


def _cmdline(pid: int) -> str:
    try:
        return f"{pid}: " + (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    except OSError:
        return str(pid)


def run_markdown(path: Path) -> list[Block]:
    """Run one markdown file in a fresh sandbox; the blocks it skipped. Raises DocsError."""
    with Sandbox() as sandbox:
        sandbox.run_file(path)
        return sandbox.skipped
