"""`tagentd gc` and `tagentd inspect`: the commands about the state dir.

`gc` asks the running daemon to apply retention; with no daemon running it
works on the state dir directly (it takes the runtime dir's lock first, so it
can never race a daemon). `inspect` prints any checkpoint file as JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import msgspec

from tagent_client.errors import DaemonUnavailable, InvalidRequest
from tagentd.settings.locations import Locations

KINDS = "inspect reads a state dir's runs/*.ckpt, wal/*.wal, runs.idx, broker/*.wal and broker/snapshot.ckpt"


def _json_line(value: Any) -> str:
    return msgspec.json.encode(value, enc_hook=str).decode()


def register(cli: click.Group, where_options: Any) -> None:
    """Add the state commands to the `tagentd` group."""

    @cli.command()
    @click.option("--older-than", "days", type=float, help="Remove finished runs older than DAYS (default: retention_days).")
    @click.option("--keep", type=int, help="Keep at most N finished runs (default: retention_max_runs).")
    @click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON and nothing else.")
    @where_options
    def gc(days: float | None, keep: int | None, dry_run: bool, as_json: bool, config_path: Path | None,
           runtime_dir: Path | None) -> None:
        """Remove finished runs past the retention limits, oldest first, at any age (unfinished runs never)."""
        max_age = days * 86400 if days is not None else None
        try:
            from tagent_client.client.sync import Client

            with Client(runtime_dir=Locations(config_path, runtime_dir).runtime_dir) as client:
                outcome = client.gc(max_age_s=max_age, max_runs=keep, dry_run=dry_run)
        except DaemonUnavailable:
            from tagentd.settings.config import load_settings  # asyncio & co.: only when there is no daemon to ask

            settings, _ = load_settings(config_path, {"runtime_dir": runtime_dir} if runtime_dir else {})
            outcome = _offline_gc(settings, max_age, keep, dry_run)
        if as_json:
            click.echo(json.dumps(outcome))
            return
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} {len(outcome['removed'])} finished run(s)")
        for run_id in outcome["removed"]:
            click.echo(f"  {run_id}")
        click.echo("(kept whatever the limits: unfinished runs)")

    @cli.command()
    @click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
    def inspect(path: Path) -> None:
        """Print a checkpoint file (runs/*.ckpt, wal/*.wal, runs.idx, broker/*.wal, broker/snapshot.ckpt) as JSON, one line per record."""
        from tagentd.broker.store import BrokerCheckpoint, Logged
        from tagentd.runs.index import IndexChanges
        from tagentd.runs.records import RunCheckpoint, WalRecord, check_format
        from tagentd.storage.records import CorruptRecord, read_frames, written_frames

        if path.suffix == ".idx":
            decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(IndexChanges)
        elif path.parent.name == "broker":
            decoder = msgspec.msgpack.Decoder(BrokerCheckpoint if path.suffix == ".ckpt" else Logged)
        else:
            decoder = msgspec.msgpack.Decoder(RunCheckpoint if path.suffix == ".ckpt" else WalRecord)
        data = path.read_bytes()
        frames = written_frames if path.suffix == ".wal" else read_frames  # a live segment ends in unwritten reserve
        try:
            for _, payload in frames(data, path):
                record = decoder.decode(payload)
                check_format(record.format, path)
                click.echo(_json_line(record))
        except CorruptRecord as exc:
            if exc.offset == 0:
                raise InvalidRequest(f"{path}: not a tagentd checkpoint file ({exc.reason} at its start); {KINDS}") from None
            raise InvalidRequest(f"{exc} (everything before it was printed)") from None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidRequest(f"{path}: not a tagentd checkpoint record: {exc}; {KINDS}") from None


def _offline_gc(settings: Any, max_age_s: float | None, keep: int | None, dry_run: bool) -> dict[str, Any]:
    """Retention on the state dir itself, holding the daemon's lock so no daemon can start meanwhile."""
    import asyncio

    from tagent_client.wire import paths
    from tagentd.plumbing.lock import InstanceLock
    from tagentd.runs import retention
    from tagentd.runs.durable import DurableStore

    lock = InstanceLock(paths.ensure_private_dir(Path(settings.runtime_dir), "runtime dir"))
    try:
        store = DurableStore(paths.ensure_private_dir(Path(settings.state_dir), "state dir"))
        finished = retention.oldest_first(store.load().entries)
        age = settings.retention_days * 86400 if max_age_s is None else max_age_s
        limit = settings.retention_max_runs if keep is None else keep
        doomed = retention.expired(finished, len(finished), now=time.time(), max_age_s=age, max_runs=limit)
        if not dry_run and doomed:
            for run_id in doomed:
                store.remove(run_id)
            asyncio.run(store.flush())
        store.close()
        return {"removed": doomed, "dry_run": dry_run}
    finally:
        lock.close()
