"""The worker template: one process that imports the worker and the agent runtime once, then forks workers.

    python -m tagentd.executor.template --parent-pid PID --control-fd FD

Started by the daemon (tagentd.executor.spawner), which talks to it over a SOCK_SEQPACKET socket (FD): one msgpack
message per packet, `Fork` in, `Ready` / `Forked` (with the child's pidfd attached, SCM_RIGHTS) / `Exited` out.
A worker forked from it starts warm: pydantic-ai, its OpenAI client and the price table are already imported,
and one agent step has already run in memory (tagentd.worker.warmup), so pydantic's lazily built schemas exist
too; all of it is shared copy-on-write with the template and the other workers. The runtime is imported without the
integrations its libraries load only because they are installed (NOT_PRELOADED), and before the first fork the
template drops its mappings of the extension code its imports ran once (tagentd.executor.file_pages).

Guarantees:
- It dies with the daemon: PR_SET_PDEATHSIG armed first thing, then the parent must still be --parent-pid;
  it also exits when the control socket closes.
- It never creates a ZeroMQ context; its warm-up's event loop is closed before the first fork; and it forks
  only while it has a single thread (checked after the warm-up and before every fork: a fork of a threaded
  process may inherit a lock held by another thread). Before the first
  fork it freezes the garbage collector's view of the imported objects, so children keep sharing those pages
  (without collecting first: see main()).
- Each child arms its own PR_SET_PDEATHSIG and checks that its parent is still the template, closes the
  template's descriptors, restores default signal handling, re-seeds `random`, names itself tagentd-w<id> and
  runs `tagentd.worker.main(argv)` (which ends with os._exit): it never returns into this module's loop.
- It reaps every child and reports its exit status as subprocess does (-N: killed by signal N).
- It keeps the daemon's token (wire.TOKEN_ENV) and a worker's CURVE keys (credentials.CURVE_ENV) out of its own
  environment and hands them to each child only.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import random
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

import msgspec

from tagentd.executor import file_pages
from tagentd.plumbing import lifeline
from tagentd.worker.credentials import CURVE_ENV
from tagentd.worker.wire import TOKEN_ENV

log = logging.getLogger("tagentd.template")

MAX_PACKET = 64 * 1024


class Fork(msgspec.Struct, tag="fork"):
    """Daemon -> template: fork a worker that runs `python -m tagentd.worker ARGV` (less --parent-pid)."""

    req: int
    argv: list[str]


class Ready(msgspec.Struct, tag="ready"):
    """Template -> daemon, once: imports done; `agent_runtime` says whether the agent runtime imported."""

    pid: int
    agent_runtime: bool
    import_s: float


class Forked(msgspec.Struct, tag="forked"):
    """Template -> daemon: the worker of `req` runs as `pid` (its pidfd rides along when the kernel has pidfds)."""

    req: int
    pid: int


class ForkFailed(msgspec.Struct, tag="fork_failed"):
    req: int
    error: str


class Exited(msgspec.Struct, tag="exited"):
    """Template -> daemon: a worker ended; `code` as subprocess.Popen.returncode."""

    pid: int
    code: int


ToTemplate = Fork
FromTemplate = Ready | Forked | ForkFailed | Exited

encode = msgspec.msgpack.Encoder().encode
to_template = msgspec.msgpack.Decoder(ToTemplate)
from_template = msgspec.msgpack.Decoder(FromTemplate)


class Template:
    """The fork loop; everything runs on the main (and only) thread."""

    def __init__(self, control: socket.socket, secrets: dict[str, str]) -> None:
        self.control = control
        self.secrets = secrets  # environment variables only the workers get: the token, CURVE keys
        self.pid = os.getpid()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.selector = selectors.DefaultSelector()

    def serve(self, ready: Ready) -> int:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select() through the wakeup fd
        self.selector.register(self.control, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.control.send(encode(ready))
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.control:
                    packet = self.control.recv(MAX_PACKET)
                    if not packet:
                        log.info("the daemon closed the control socket; exiting")
                        return 0
                    self.on_request(to_template.decode(packet))
                else:
                    os.read(self.wake_r, 512)
            self.reap()

    def on_request(self, request: Fork) -> None:
        if threading.active_count() != 1:  # a fork of a threaded process may inherit a held lock
            self.control.send(encode(ForkFailed(req=request.req, error=f"the template has "
                                                f"{threading.active_count()} threads; it forks only with one")))
            return
        try:
            pid = os.fork()
        except OSError as exc:
            self.control.send(encode(ForkFailed(req=request.req, error=f"fork failed: {exc}")))
            return
        if pid == 0:
            self.become_worker(request.argv)  # never returns
        pidfd = _pidfd(pid)  # before any reap: the pid is surely still this child
        try:
            socket.send_fds(self.control, [encode(Forked(req=request.req, pid=pid))], [pidfd] if pidfd is not None else [])
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def become_worker(self, argv: list[str]) -> None:
        code = 1
        try:
            lifeline.die_with_parent(self.pid, log)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.selector.close()
            self.control.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            random.seed()  # os.fork re-seeds it too; the promise does not rest on that
            gc.enable()
            os.environ.update(self.secrets)
            from tagentd.worker.start import main

            main([*argv, "--parent-pid", str(self.pid)])  # ends with os._exit
        except SystemExit as exc:  # argparse: bad arguments
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - say why, never fall back into the template's loop
            log.exception("forked worker failed to start")
        finally:
            sys.stderr.flush()
            os._exit(code)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.control.send(encode(Exited(pid=pid, code=os.waitstatus_to_exitcode(status))))


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: the daemon signals by pid
        return None


#: Packages that the agent runtime's libraries import only because they happen to be installed, for a feature no
#: step can reach from a worker: rich, which the legacy `httpx` package (installed with the `tagent` extra) loads
#: for its command-line client, ~4 MB of every worker's shared heap. The template imports the runtime with it
#: hidden, then un-hides it: a step can still import and use it. aiohttp and httpx themselves (~12 MB, also from
#: the `tagent` extra) stay preloaded: the OpenAI SDK and pydantic-ai decide at import whether they are there
#: (`openai.DefaultAioHttpClient`, pydantic-ai's handling of legacy httpx clients), and hiding them would take
#: those features away from steps.
NOT_PRELOADED = ("rich",)


@contextlib.contextmanager
def hidden_modules(names: tuple[str, ...]) -> Iterator[None]:
    """While inside, `import NAME` (and its submodules) raises ImportError for each of `names` not yet imported;
    afterwards they import as usual. For a single-threaded process only (another thread's import would fail)."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment] - the import system's "not importable" marker
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def warm_up() -> bool:
    """Import everything a worker needs and run one agent step in memory; True if the agent runtime works."""
    import concurrent.futures

    from tagentd.worker import process as worker  # noqa: F401 - the worker itself, zmq and the client library
    from tagentd.worker import start  # noqa: F401 - what each child runs (become_worker): imported once, shared
    from tagentd.worker.llm import preload_agent_runtime

    done: concurrent.futures.Future[bool] = concurrent.futures.Future()
    with hidden_modules(NOT_PRELOADED):
        preload_agent_runtime(done)  # on this thread: the template must never have another
        if not done.result():
            return False
        try:
            from tagentd.worker.warmup import warm_agent_path

            warm_agent_path()
        except Exception:  # noqa: BLE001 - an optimization: the workers still run agent steps, only slower at first
            log.warning("the in-memory agent step failed; the first agent step of each worker will be slower",
                        exc_info=True)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tagentd.executor.template", description="tagentd's worker template.")
    parser.add_argument("--parent-pid", type=int, required=True, help="the daemon's pid: the template dies with it")
    parser.add_argument("--control-fd", type=int, required=True, help="the daemon's SOCK_SEQPACKET socket")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s tagentd-template pid {os.getpid()} %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of a foreground daemon: the daemon decides
    lifeline.die_with_parent(args.parent_pid, log)
    lifeline.set_name("tagentd-tmpl")
    control = socket.socket(fileno=args.control_fd)
    secrets = {name: os.environ.pop(name) for name in (TOKEN_ENV, CURVE_ENV) if name in os.environ}
    gc.disable()  # no collection while importing, and none to dirty shared pages before a fork
    began = time.monotonic()
    agent_runtime = warm_up()
    if threading.active_count() != 1:
        log.error("importing the agent runtime left %d thread(s) running; a template must not fork with threads",
                  threading.active_count() - 1)
        sys.stderr.flush()
        os._exit(1)
    # No collection before the freeze: the cyclic garbage of the imports and the warm-up stays (frozen, shared,
    # never scanned), because freeing it would leave free blocks all over the shared heap, and each worker's
    # first allocations would land there, copying those pages (measured: 0.7 MB more private memory per worker,
    # and no less for the template: freed blocks stay in its arenas).
    file_pages.unmap_clean_file_pages()  # the extension code the imports ran once; workers map what they run
    lifeline.release_free_memory()
    gc.freeze()  # children's collections leave the imported objects (and their pages) alone
    ready = Ready(pid=os.getpid(), agent_runtime=agent_runtime, import_s=round(time.monotonic() - began, 3))
    log.info("warm in %.2fs (agent runtime %s); forking workers", ready.import_s,
             "imported" if agent_runtime else "unavailable")
    code = 1
    try:
        code = Template(control, secrets).serve(ready)
    except (OSError, msgspec.DecodeError) as exc:  # the daemon is gone or spoke nonsense: nothing to serve
        log.error("control socket: %s; exiting", exc)
    finally:
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
