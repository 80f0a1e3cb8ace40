"""The daemon's settings and where each value came from.

Precedence, lowest first: defaults, the TOML file (`$XDG_CONFIG_HOME/tagentd/tagentd.toml`
or `--config`), `TAGENTD_*` environment variables, command-line flags. `load_settings`
also returns, per setting, the layer that set it ("default", "file <path>",
"env TAGENTD_X", "flag --x") so `tagentd config show` and every error message can say
which knob to turn. A bad value is one line naming the setting, the problem and its
source; nothing is half-applied.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import msgspec

from tagent_client.errors import ConfigError
from tagent_client.run.breakers import BreakerRules, BreakerSettings
from tagent_client.run.checked import Problem, above, at_least, checked, checked_map, from_struct, parse_bool
from tagent_client.run.llm import EndpointSettings, LLMConfig, PriceOverride, check_endpoint_name
from tagent_client.wire import paths
from tagentd.settings.locations import LOG_FILE, absolute_path, read_config_file, relative_to

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIB = 1024 * 1024

#: Flags whose name is not `--<field-with-dashes>`.
_FLAG_NAMES = {"watch_dirs": "--watch"}
#: Env vars read in addition to TAGENTD_<FIELD> (lower precedence than TAGENTD_<FIELD>).
_ENV_ALIASES = {"model": "TAGENT_MODEL"}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": MIB, "mb": MIB, "mib": MIB,
               "g": 1024 * MIB, "gb": 1024 * MIB, "gib": 1024 * MIB}


class SpaceSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`[spaces.NAME]` in tagentd.toml: `allow` lists the only pipelines whose steps may use the space."""

    allow: list[str] | None = None


class MailboxSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`[mailboxes.NAME]` in tagentd.toml: `max_deliveries` for pipeline NAME's mailbox (over the default)."""

    max_deliveries: int

    def __post_init__(self) -> None:
        at_least(self, "max_deliveries", 1)


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every knob of the daemon (docs/operations.md, "Configuration"). Paths are absolute once checked.

    A plain msgspec Struct, so that reading the settings imports no pydantic: `Settings.checked(values)`
    converts and checks a dict of raw values (strings from the environment included); building one directly
    checks the same rules (`__post_init__`), without converting types.
    """

    runtime_dir: Path = msgspec.field(default_factory=paths.runtime_dir)
    state_dir: Path = msgspec.field(default_factory=paths.state_dir)
    workers: int = msgspec.field(default_factory=lambda: os.cpu_count() or 1)
    worker_concurrency: int = 128  # concurrent steps per worker
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 5.0
    timeout_grace: float = 2.0  # cooperative cancel -> kill
    recycle_after: int = 0  # restart a worker after N tasks; 0 = never
    worker_template: bool = True  # fork workers from a process that has the agent runtime imported
    durable: bool = True
    max_message_bytes: int = 16 * MIB
    log_level: str = "INFO"
    load_timeout: float = 30.0
    model: str | None = None
    retention_days: float = 30  # delete finished runs older than this; 0 = no age limit
    retention_max_runs: int = 10000  # keep at most N finished runs, at any age; 0 = no limit
    max_child_depth: int = 5  # sub-pipelines nested deeper than this are refused at submit
    max_child_fan_out: int = 1000  # child runs one sub-pipeline step may start
    run_cache_size: int = 256  # finished runs kept in memory; others are read from disk when asked for
    wal_segment_bytes: int = 16 * MIB  # WAL size at which runs are snapshotted and the WAL dropped
    watch_dirs: list[Path] = msgspec.field(default_factory=list)  # empty = $XDG_DATA_HOME/tagentd/pipelines
    watch_recursive: bool = False  # also watch the watched folders' subfolders
    on_change: str = "keep"  # a watched file changed: "keep" or "restart" (cancel) its older runs
    on_delete: str = "ignore"  # a watched file was deleted: "ignore", or "cancel" its runs
    endpoints: dict[str, EndpointSettings] = msgspec.field(default_factory=dict)  # [endpoints.NAME]: LLM servers
    price_overrides: dict[str, PriceOverride] = msgspec.field(default_factory=dict)  # model -> $ per million tokens
    breaker: BreakerSettings = msgspec.field(default_factory=BreakerSettings)  # every circuit breaker's defaults
    breakers: dict[str, BreakerSettings] = msgspec.field(default_factory=dict)  # ctx.breaker(NAME)'s own
    mailbox_max: int = 100_000  # unacknowledged messages a pipeline's mailbox may hold
    max_deliveries: int = 5  # failed deliveries before a message becomes a dead letter
    mailboxes: dict[str, MailboxSettings] = msgspec.field(default_factory=dict)  # [mailboxes.NAME] max_deliveries
    trigger_max_concurrent: int = 4  # runs a triggered pipeline may have going at once
    spaces: dict[str, SpaceSettings] = msgspec.field(default_factory=dict)  # [spaces.NAME] allow = [pipelines]
    #: also take workers over tcp with ZeroMQ CURVE here, e.g. tcp://127.0.0.1:0; a non-loopback address lets
    #: workers on other machines in
    worker_listen: str | None = None
    #: the endpoint workers are told to connect to when worker_listen is reached by another address (NAT, proxy)
    worker_advertise: str | None = None
    local_workers_via_curve: bool = False  # the local pool's workers join over worker_listen too
    otlp_endpoint: str | None = None  # send traces over OTLP/HTTP to this collector (needs tagentd[otel])
    trace_url: str | None = None  # a run's trace in your trace viewer, e.g. http://127.0.0.1:16686/trace/{trace_id}
    web: bool = False  # serve the dashboard (a separate process the daemon supervises)
    web_host: str = "127.0.0.1"  # the dashboard's address; other than loopback exposes it
    web_port: int = 0  # the dashboard's port; 0 = a free port picked at start
    executor: str = "local"  # where steps run: "local" worker processes here, or "ray": a Ray cluster
    ray_address: str | None = None  # the Ray cluster to join ('auto', 'ray://head:10001'); none = start one here
    ray_runtime_env: dict[str, Any] = msgspec.field(default_factory=dict)  # Ray's runtime_env for the workers

    @classmethod
    def checked(cls, values: dict[str, Any]) -> Settings:
        """Settings from raw values (TOML, strings of environment variables, flags); `Problem` names the setting."""
        unknown = [name for name in values if name not in FIELDS]
        if unknown:
            raise Problem(unknown[0], "unknown setting")
        data = dict(values)
        for name, value in values.items():
            if name in _BOOLS:
                data[name] = parse_bool(value)
            elif name in _SIZES:
                data[name] = _size(name, value)
            elif name == "watch_dirs" and isinstance(value, str):
                data[name] = [part for part in value.split(os.pathsep) if part.strip()]
            elif name in _TABLES:
                data[name] = checked_map(value, _TABLES[name], where=name)
            elif name == "breaker":
                data[name] = checked(value, BreakerSettings, where=name)
        return checked(data, cls)

    def __post_init__(self) -> None:
        for name, limit in _AT_LEAST.items():
            at_least(self, name, limit)
        for name in ("heartbeat_interval", "heartbeat_timeout", "load_timeout"):
            above(self, name, 0)
        if not 0 <= self.web_port <= 65535:
            raise Problem("web_port", f"must be between 0 and 65535, got {self.web_port}")
        if not self.web_host:
            raise Problem("web_host", "must not be empty")
        self.runtime_dir = absolute_path(Path(self.runtime_dir))
        self.state_dir = absolute_path(Path(self.state_dir))
        self.watch_dirs = [absolute_path(Path(p)) for p in self.watch_dirs]
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise Problem(name, f"must be {' or '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        level = self.log_level.strip().upper()
        if level not in LOG_LEVELS:
            raise Problem("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        self.log_level = level
        self.model = (self.model.strip() or None) if self.model is not None else None
        self.worker_listen = _tcp_endpoint("worker_listen", self.worker_listen)
        self.worker_advertise = _tcp_endpoint("worker_advertise", self.worker_advertise)
        self.otlp_endpoint = _url("otlp_endpoint", self.otlp_endpoint)
        self.trace_url = _url("trace_url", self.trace_url)
        if self.trace_url is not None and "{trace_id}" not in self.trace_url:
            raise Problem("trace_url", f"must contain {{trace_id}} where the trace id goes, got {self.trace_url!r}")
        for name in self.endpoints:
            check_endpoint_name(name)
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise Problem("heartbeat_timeout", f"must be greater than heartbeat_interval ({self.heartbeat_interval})")
        if self.local_workers_via_curve and self.worker_listen is None:
            raise Problem("local_workers_via_curve", "needs worker_listen (the endpoint they join over)")

    def llm_config(self) -> LLMConfig:
        return LLMConfig(endpoints=self.endpoints, price_overrides=self.price_overrides)

    def breaker_rules(self) -> BreakerRules:
        """Each circuit breaker's rule: `[breaker]`, then an endpoint's `breaker = {...}` or `[breakers.NAME]`."""
        return BreakerRules(default=self.breaker, endpoints=self.endpoints, named=self.breakers)

    def worker_llm_args(self) -> list[str]:
        """The worker command-line flag carrying endpoints and prices (names of key variables, never keys)."""
        if not (self.endpoints or self.price_overrides):
            return []
        return ["--llm", self.llm_config().to_json()]

    def worker_trace_args(self) -> list[str]:
        """The worker command-line flag that turns traces on (none when `otlp_endpoint` is unset)."""
        return ["--otlp-endpoint", self.otlp_endpoint] if self.otlp_endpoint else []

    @property
    def log_file(self) -> Path:
        """The daemon's log file (the background `tagentd start` shows its tail on failure)."""
        return self.state_dir / LOG_FILE

    @property
    def pidfile(self) -> Path:
        return self.runtime_dir / paths.PIDFILE

    def socket_paths(self) -> dict[str, Path]:
        """The ipc socket files by role: control, events, workers."""
        return {
            "control": self.runtime_dir / paths.CONTROL_SOCKET,
            "events": self.runtime_dir / paths.EVENTS_SOCKET,
            "workers": self.runtime_dir / paths.WORKERS_SOCKET,
        }


    def as_data(self) -> dict[str, Any]:
        """Every setting as plain JSON-able data (paths as strings), in field order."""
        return from_struct(self)


FIELDS: tuple[str, ...] = Settings.__struct_fields__
_BOOLS = frozenset(f.name for f in msgspec.structs.fields(Settings) if f.type is bool)
_SIZES = ("max_message_bytes", "wal_segment_bytes")
_CHOICES = {"on_change": ("keep", "restart"), "on_delete": ("ignore", "cancel"), "executor": ("local", "ray")}
_TABLES: dict[str, type[Any]] = {"endpoints": EndpointSettings, "price_overrides": PriceOverride,
                                 "breakers": BreakerSettings, "mailboxes": MailboxSettings, "spaces": SpaceSettings}
_AT_LEAST = {"workers": 1, "worker_concurrency": 1, "timeout_grace": 0, "recycle_after": 0, "max_message_bytes": 1024,
             "retention_days": 0, "retention_max_runs": 0, "max_child_depth": 0, "max_child_fan_out": 1,
             "run_cache_size": 0, "wal_segment_bytes": 4096, "mailbox_max": 1, "max_deliveries": 1,
             "trigger_max_concurrent": 1}


def _size(field: str, value: Any) -> Any:
    """'16MiB', '512KiB', '1048576' as bytes; anything else unchanged (the type check then names it)."""
    if not isinstance(value, str):
        return value
    match = _SIZE.match(value)
    if match is None:
        raise Problem(field, f"must be a size in bytes such as 16777216 or '16MiB', got {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]


def _tcp_endpoint(field: str, value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    host, _, port = value.removeprefix("tcp://").rpartition(":")
    if not value.startswith("tcp://") or not host or not port.isdigit():
        raise Problem(field, f"must be a tcp endpoint such as tcp://127.0.0.1:0 or tcp://0.0.0.0:7001, got {value!r}")
    return value


def _url(field: str, value: str | None) -> str | None:
    value = (value.strip() or None) if value is not None else None
    if value is not None and not value.startswith(("http://", "https://")):
        raise Problem(field, f"must start with http:// or https://, got {value!r}")
    return value


def env_var(field: str) -> str:
    return f"TAGENTD_{field.upper()}"


def flag_name(field: str, value: Any = None) -> str:
    if field in ("durable", "web") and value is False:
        return f"--no-{field}"
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def load_settings(config_path: Path | None, flags: dict[str, Any]) -> tuple[Settings, dict[str, str]]:
    """Build the effective Settings and, per field, the layer its value came from.

    `config_path` None means the default file, which may be missing; an explicit path must
    exist. `flags` maps field names to command-line values; None means "not given".
    Raises ConfigError with one line (setting, problem, source) for any bad value.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(field: str, value: Any, source: str) -> None:
        values[field] = value
        sources[field] = source

    for field, value in _read_file(config_path).items():
        put(field, value[0], value[1])
    for field in FIELDS:
        for name in (_ENV_ALIASES.get(field), env_var(field)):
            if name and os.environ.get(name, "").strip():  # empty = unset, as in tagent_client.wire.paths
                put(field, _env_value(field, os.environ[name]), f"env {name}")
    for field, value in flags.items():
        if field not in FIELDS:
            raise ConfigError(f"config: {field}: unknown setting (from flag {flag_name(field)})")
        if value is None or (field == "watch_dirs" and not value):
            continue
        if field in ("runtime_dir", "state_dir"):
            value = absolute_path(Path(value))
        elif field == "watch_dirs":
            value = [absolute_path(Path(p)) for p in value]
        put(field, value, f"flag {flag_name(field, value)}")

    try:
        settings = Settings.checked(values)
    except Problem as exc:
        field = exc.field.split(".")[0] or "settings"
        raise ConfigError(f"config: {exc.field or field}: {exc.message} (from {sources.get(field, 'default')})") from None
    return settings, {field: sources.get(field, "default") for field in FIELDS}


def _read_file(config_path: Path | None) -> dict[str, tuple[Any, str]]:
    data, path = read_config_file(config_path)
    source = f"file {path}"
    out: dict[str, tuple[Any, str]] = {}
    for key, value in data.items():
        field = key.replace("-", "_")
        if field not in FIELDS:
            hint = difflib.get_close_matches(field, FIELDS, n=1)
            also = f"; did you mean {hint[0]!r}?" if hint else f"; known settings: {', '.join(FIELDS)}"
            raise ConfigError(f"config: {key}: unknown setting (from {source}){also}")
        if field in ("runtime_dir", "state_dir") and isinstance(value, str):
            value = relative_to(path.parent, value)
        elif field == "watch_dirs" and isinstance(value, list):
            value = [relative_to(path.parent, v) if isinstance(v, str) else v for v in value]
        out[field] = (value, source)
    return out


def _env_value(field: str, raw: str) -> Any:
    """Strings are converted by `Settings.checked`; paths are made absolute against the cwd."""
    if field in ("runtime_dir", "state_dir"):
        return absolute_path(Path(raw))
    if field == "watch_dirs":
        return [absolute_path(Path(p)) for p in raw.split(os.pathsep) if p.strip()]
    if field in ("endpoints", "price_overrides", "spaces", "mailboxes", "breaker", "breakers", "ray_runtime_env"):
        try:
            return json.loads(raw)
        except ValueError:
            return raw  # Settings.checked says what is wrong with it
    return raw
