"""The `tagentd` command: start, stop, restart and inspect the daemon; show its config.

Every TagentError ends the command with one line on stderr, `tagentd: <message>`, and
the exit status `errors.exit_code_for(code)` (10 already running, 3 not running, 9 bad
config, 5 timed out, ...). `--json` output is nothing but JSON on stdout.

`tagentd start` runs the daemon in the background: it re-executes itself as
`python -m tagentd start --foreground --detached ...` in a new session with stdio on
/dev/null (the daemon logs to `<state dir>/tagentd.log`), then waits until the control
socket answers a ping and the daemon its status (it answers pings while it still loads: app/launch.py).
systemd runs `tagentd start --foreground` directly (Type=notify: READY=1 once it has loaded and recovered).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec

from tagent_client.errors import DaemonUnavailable, RequestTimeout, TagentError, exit_code_for
from tagent_client.wire import paths
from tagentd import __version__
from tagentd.cli.stop import stop_daemon
from tagentd.cli.views import print_pairs, print_status, print_table, show_value
from tagentd.plumbing.lock import already_running, is_locked, read_pid
from tagentd.settings.locations import LOG_FILE, Locations, absolute_path, default_config_path

if TYPE_CHECKING:  # tagentd.settings.config (asyncio, the LLM settings) is imported only by the commands that need it
    from tagentd.settings.config import Settings

START_WAIT = 10.0
RAY_START_WAIT = 60.0  # executor = "ray": joining a cluster, or starting Ray here, takes seconds more
PING_TIMEOUT = 0.5
POLL = 0.05
LOG_TAIL_LINES = 20
NOT_RUNNING = exit_code_for(DaemonUnavailable.code)


class _Group(click.Group):
    """Turns any TagentError into `tagentd: <message>` on stderr and its exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TagentError as exc:
            click.echo(f"tagentd: {exc.message}", err=True)
            ctx.exit(exit_code_for(exc.code))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="tagentd", message="%(prog)s %(version)s")
def cli() -> None:
    """Run and manage the tagentd daemon (durable background LLM-agent pipelines)."""


def main() -> None:
    cli(prog_name="tagentd")


# -- options ------------------------------------------------------------------------------


def _where_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--config and --runtime-dir: enough to find a running daemon."""
    f = click.option("--runtime-dir", type=click.Path(path_type=Path, file_okay=False),
                     help="Runtime dir (sockets, pidfile). Default: $TAGENTD_RUNTIME_DIR, $XDG_RUNTIME_DIR/tagentd, /tmp/tagentd-$UID.")(f)
    return click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
                        help="Config file. Default: $XDG_CONFIG_HOME/tagentd/tagentd.toml (optional).")(f)


def _settings_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Every setting that has a flag; values not given stay None and do not override."""
    f = click.option("--watch", "watch_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
                     help="Start pipeline files dropped into DIR (repeatable).")(f)
    f = click.option("--durable/--no-durable", default=None, help="Checkpoint runs to the state dir (default: on).")(f)
    f = click.option("--web-port", type=click.IntRange(0, 65535), help="The dashboard's port (default: 0, a free one).")(f)
    f = click.option("--web-host", help="The dashboard's address (default: 127.0.0.1; anything else exposes it).")(f)
    f = click.option("--web/--no-web", default=None, help="Serve the dashboard ('tagent ui' opens it; default: off).")(f)
    f = click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
                     help="Daemon log level.")(f)
    f = click.option("--workers", type=int, help="Worker processes (default: CPU count).")(f)
    f = click.option("--executor", type=click.Choice(["local", "ray"]),
                     help="Where steps run: worker processes here (default) or a Ray cluster (docs/scale-out.md).")(f)
    f = click.option("--ray-address", help="With --executor ray: the cluster ('auto', 'ray://head:10001'); none = a local Ray.")(f)
    f = click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
                     help="State dir (checkpoints, log). Default: $TAGENTD_STATE_DIR, $XDG_STATE_HOME/tagentd.")(f)
    return _where_options(f)


def _flags(**values: Any) -> dict[str, Any]:
    """Option values -> load_settings flags; options not given (None, no --watch) are left out."""
    return {field: list(value) if field == "watch_dirs" else value
            for field, value in values.items() if value is not None and value != ()}


def _forward(config_path: Path | None, flags: dict[str, Any]) -> list[str]:
    """The command-line flags that make a child load the same settings as we did."""
    from tagentd.settings.config import flag_name  # noqa: PLC0415 - see TYPE_CHECKING above

    argv = ["--config", str(absolute_path(config_path))] if config_path else []
    for field, value in flags.items():
        if field == "watch_dirs":
            for directory in value:
                argv += ["--watch", str(absolute_path(directory))]
        elif field in ("durable", "web"):
            argv.append(flag_name(field, value))
        else:
            argv += [flag_name(field), str(absolute_path(value) if isinstance(value, Path) else value)]
    return argv


# -- talking to the daemon -------------------------------------------------------------------


def _call(runtime_dir: Path, timeout: float, method: str, **kwargs: Any) -> Any:
    """One request on a fresh Client (connecting pings first: DaemonUnavailable if nobody answers)."""
    from tagent_client.client.sync import Client  # noqa: PLC0415 - only the commands that talk to the daemon need it

    with Client(runtime_dir=runtime_dir, timeout=timeout) as client:
        return getattr(client, method)(**kwargs)


def _answers(runtime_dir: Path) -> bool:
    """True once the control socket exists and a ping is answered."""
    if not (runtime_dir / paths.CONTROL_SOCKET).exists():
        return False
    try:
        _call(runtime_dir, PING_TIMEOUT, "ping")
    except (DaemonUnavailable, RequestTimeout):
        return False
    return True


# -- start -------------------------------------------------------------------------------------


@cli.command()
@click.option("--foreground", is_flag=True, help="Run in this process (systemd, containers, debugging).")
@click.option("--detached", is_flag=True, hidden=True)
@_settings_options
def start(foreground: bool, detached: bool, config_path: Path | None, **values: Any) -> None:
    """Start the daemon (in the background unless --foreground)."""
    if foreground:  # no garbage collection until the daemon answers: tagentd.app.daemon.collect_after_start
        gc.disable()
    from tagentd.settings.config import load_settings  # noqa: PLC0415 - see TYPE_CHECKING above

    flags = _flags(**values)
    settings, _ = load_settings(config_path, flags)
    if foreground:
        sys.exit(_serve(settings, detached=detached))
    sys.exit(_start_background(settings, config_path, flags))


def _serve(settings: Settings, *, detached: bool) -> int:
    from tagentd.app.launch import serve  # noqa: PLC0415 - keep `tagentd status` & co. light

    try:
        return serve(settings, foreground_log=not detached)
    except TagentError as exc:
        if detached:
            _append_log(settings, f"tagentd: {exc.message}\n")
        raise
    except Exception:
        if detached:
            import traceback  # noqa: PLC0415 - only a crash needs it

            _append_log(settings, f"tagentd: crashed:\n{traceback.format_exc()}")
        raise


def _append_log(settings: Settings, text: str) -> None:
    """A detached daemon's stderr is /dev/null: leave its last words where `start` looks."""
    try:
        paths.check_private_dir(settings.state_dir, "state dir")
        fd = os.open(settings.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(text)
    except (OSError, TagentError):
        pass


def _start_background(settings: Settings, config_path: Path | None, flags: dict[str, Any]) -> int:
    runtime_dir = settings.runtime_dir
    if is_locked(runtime_dir):
        raise already_running(runtime_dir, read_pid(runtime_dir))
    # Report dir problems here, on the user's terminal, rather than in a log they must find.
    paths.ensure_private_dir(runtime_dir, "runtime dir")
    paths.ensure_private_dir(settings.state_dir, "state dir")
    from tagentd.watch.rules import watch_folders  # noqa: PLC0415 - only `start` needs it

    watch_folders(settings.watch_dirs)  # ConfigError for an unsafe watch folder
    log_start = _size(settings.log_file)

    import subprocess  # noqa: PLC0415 - only `start` makes a process

    argv = [sys.executable, "-m", "tagentd", "start", "--foreground", "--detached", *_forward(config_path, flags)]
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, close_fds=True)
    wait = START_WAIT if settings.executor == "local" else RAY_START_WAIT
    deadline = time.monotonic() + wait
    while not _answers(runtime_dir):
        status = child.poll()
        if status is not None:
            _report_early_exit(settings, status, log_start)
            return status if 0 < status < 256 else 1
        if time.monotonic() >= deadline:
            click.echo(
                f"tagentd: the daemon (pid {child.pid}) did not answer on {runtime_dir / paths.CONTROL_SOCKET} "
                f"within {wait:g} s; it may still be starting: check 'tagentd status' and {settings.log_file}",
                err=True,
            )
            return exit_code_for(RequestTimeout.code)
        time.sleep(POLL)

    # A ping is answered while the daemon still loads (app/launch.py); its status comes once it has loaded and
    # recovered, or the error that ended its start (a TagentError: one line and its exit status, as in the foreground).
    try:
        info = _call(runtime_dir, max(2.0, deadline - time.monotonic()), "daemon_status")
        pid, sockets, state_dir = info.pid, info.sockets, info.state_dir
    except (DaemonUnavailable, RequestTimeout):
        status = child.poll()
        if status is not None:
            _report_early_exit(settings, status, log_start)
            return status if 0 < status < 256 else 1
        pid, sockets, state_dir = child.pid, {k: str(v) for k, v in settings.socket_paths().items()}, str(settings.state_dir)
    rows = [(f"{name} socket", path) for name, path in sockets.items()]
    rows += [("runtime dir", str(runtime_dir)), ("state dir", state_dir), ("log file", str(Path(state_dir) / LOG_FILE))]
    click.echo(f"tagentd started (pid {pid})")
    print_pairs(rows)
    return 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _report_early_exit(settings: Settings, status: int, log_start: int) -> None:
    how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
    log_file = settings.log_file
    try:
        with open(log_file, "rb") as f:
            if _size(log_file) >= log_start:
                f.seek(log_start)
            lines = f.read().decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        lines = []
    if not lines:
        click.echo(f"tagentd: the daemon {how} during startup and wrote nothing to {log_file}; "
                   f"run 'tagentd start --foreground' to see why", err=True)
        return
    click.echo(f"tagentd: the daemon {how} during startup; last lines of {log_file}:", err=True)
    for line in lines:
        click.echo(f"  {line}", err=True)


# -- stop / restart --------------------------------------------------------------------------


_STOP_TIMEOUT = click.option(
    "--timeout", type=click.FloatRange(min=0), metavar="S",
    help="Wait at most S seconds for the steps in flight, then checkpoint them (default: 10).")


@cli.command()
@click.option("--fast", is_flag=True, help="Checkpoint the steps in flight and stop now (they re-run after the next start).")
@_STOP_TIMEOUT
@_where_options
def stop(fast: bool, timeout: float | None, config_path: Path | None, runtime_dir: Path | None) -> None:
    """Stop the daemon: start nothing new, wait for the steps in flight (say which), exit."""
    stop_daemon(Locations(config_path, runtime_dir).runtime_dir, fast=fast, timeout=timeout)


@cli.command()
@click.option("--fast", is_flag=True, help="Checkpoint the steps in flight and stop now.")
@_STOP_TIMEOUT
@_settings_options
def restart(fast: bool, timeout: float | None, config_path: Path | None, **values: Any) -> None:
    """Stop the daemon (if running), then start it in the background with these flags."""
    from tagentd.settings.config import load_settings  # noqa: PLC0415 - see TYPE_CHECKING above

    flags = _flags(**values)
    settings, _ = load_settings(config_path, flags)
    stop_daemon(settings.runtime_dir, fast=fast, timeout=timeout)
    sys.exit(_start_background(settings, config_path, flags))


# -- status ------------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (pid, sockets, workers, ...) and nothing else.")
@click.option("--metrics", "as_metrics", is_flag=True,
              help="Print the daemon's metrics in the Prometheus text format and nothing else.")
@_where_options
def status(as_json: bool, as_metrics: bool, config_path: Path | None, runtime_dir: Path | None) -> None:
    """Show whether the daemon runs, its sockets, dirs, workers and runs (or its metrics, with --metrics)."""
    where = Locations(config_path, runtime_dir)
    rd = where.runtime_dir
    if not is_locked(rd):
        if as_json:
            click.echo(json.dumps({"running": False, "runtime_dir": str(rd)}))
        else:
            click.echo(f"tagentd is not running (runtime dir {rd}); start it with 'tagentd start'")
        sys.exit(NOT_RUNNING)
    try:
        if as_metrics:
            click.echo(_call(rd, 5.0, "metrics"), nl=False)
            return
        info = _call(rd, 5.0, "daemon_status")
    except (DaemonUnavailable, RequestTimeout):
        raise DaemonUnavailable(
            f"tagentd (pid {read_pid(rd)}) holds the lock in {rd} but does not answer on {rd / paths.CONTROL_SOCKET}; "
            f"see {where.log_file}, or restart it with 'tagentd restart'"
        ) from None
    if as_json:
        data = msgspec.to_builtins(info)
        data["running"] = True
        data["log_file"] = str(Path(info.state_dir) / LOG_FILE)
        click.echo(json.dumps(data, indent=2, default=str))
        return
    print_status(info)


# -- config / version --------------------------------------------------------------------------


@cli.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON and nothing else.")
@_settings_options
def config_show(as_json: bool, config_path: Path | None, **values: Any) -> None:
    """Every setting, its effective value and where it came from (default, file, env, flag)."""
    from tagentd.settings.config import FIELDS, load_settings  # noqa: PLC0415 - see TYPE_CHECKING above

    settings, sources = load_settings(config_path, _flags(**values))
    data = settings.as_data()
    if as_json:
        click.echo(json.dumps({name: {"value": data[name], "source": sources[name]} for name in FIELDS}, indent=2))
        return
    path = config_path or default_config_path()
    click.echo(f"config file: {path}" + ("" if Path(path).exists() else " (not found; defaults apply)"))
    table = [("SETTING", "VALUE", "SOURCE")]
    table += [(name, show_value(data[name]), sources[name]) for name in FIELDS]
    print_table(table)


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"tagentd {__version__}")


from tagentd.cli import state as cli_state  # noqa: E402 - registers gc and inspect on the group defined above

cli_state.register(cli, _where_options)
