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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tagent_client.errors import ConfigError
from tagent_client.run.breakers import BreakerRules, BreakerSettings
from tagent_client.run.llm import EndpointSettings, LLMConfig, PriceOverride
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


class _CrossFieldError(ValueError):
    """A rule between two settings; `field` is the one the message is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class SpaceSettings(BaseModel):
    """`[spaces.NAME]` in tagentd.toml: `allow` lists the only pipelines whose steps may use the space."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] | None = None


class MailboxSettings(BaseModel):
    """`[mailboxes.NAME]` in tagentd.toml: `max_deliveries` for pipeline NAME's mailbox (over the default)."""

    model_config = ConfigDict(extra="forbid")

    max_deliveries: int = Field(ge=1)


class Settings(BaseModel):
    """Every knob of the daemon. Paths are absolute once validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    runtime_dir: Path = Field(default_factory=paths.runtime_dir)
    state_dir: Path = Field(default_factory=paths.state_dir)
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    worker_concurrency: int = Field(128, ge=1, description="concurrent steps per worker")
    heartbeat_interval: float = Field(0.5, gt=0)
    heartbeat_timeout: float = Field(5.0, gt=0)
    timeout_grace: float = Field(2.0, ge=0, description="cooperative cancel -> kill")
    recycle_after: int = Field(0, ge=0, description="restart a worker after N tasks; 0 = never")
    worker_template: bool = Field(True, description="fork workers from a process that has the agent runtime imported")
    durable: bool = True
    max_message_bytes: int = Field(16 * MIB, ge=1024)
    log_level: str = "INFO"
    load_timeout: float = Field(30.0, gt=0)
    model: str | None = None
    retention_days: float = Field(30, ge=0, description="delete finished runs older than this; 0 = no age limit")
    retention_max_runs: int = Field(10000, ge=0, description="keep at most N finished runs, at any age; 0 = no limit")
    max_child_depth: int = Field(5, ge=0, description="sub-pipelines nested deeper than this are refused at submit")
    max_child_fan_out: int = Field(1000, ge=1, description="child runs one sub-pipeline step may start")
    run_cache_size: int = Field(256, ge=0, description="finished runs kept in memory; others are read from disk when asked for")
    wal_segment_bytes: int = Field(16 * MIB, ge=4096, description="WAL size at which runs are snapshotted and the WAL dropped")
    watch_dirs: list[Path] = Field(default_factory=list, description="empty = $XDG_DATA_HOME/tagentd/pipelines")
    watch_recursive: bool = Field(False, description="also watch the watched folders' subfolders")
    on_change: Literal["keep", "restart"] = Field("keep", description="a watched file changed: keep or cancel its older runs")
    on_delete: Literal["ignore", "cancel"] = Field("ignore", description="a watched file was deleted: keep or cancel its runs")
    endpoints: dict[str, EndpointSettings] = Field(default_factory=dict, description="[endpoints.NAME]: LLM servers and limits")
    price_overrides: dict[str, PriceOverride] = Field(default_factory=dict, description="model -> $ per million tokens")
    breaker: BreakerSettings = Field(default_factory=BreakerSettings, description="[breaker]: every circuit breaker's defaults")
    breakers: dict[str, BreakerSettings] = Field(default_factory=dict, description="[breakers.NAME]: ctx.breaker(NAME)'s own")
    mailbox_max: int = Field(100_000, ge=1, description="unacknowledged messages a pipeline's mailbox may hold")
    max_deliveries: int = Field(5, ge=1, description="failed deliveries before a message becomes a dead letter")
    mailboxes: dict[str, MailboxSettings] = Field(default_factory=dict, description="[mailboxes.NAME] max_deliveries = N")
    trigger_max_concurrent: int = Field(4, ge=1, description="runs a triggered pipeline may have going at once")
    spaces: dict[str, SpaceSettings] = Field(default_factory=dict, description="[spaces.NAME] allow = [pipelines]")
    worker_listen: str | None = Field(None, description="also take workers over tcp with ZeroMQ CURVE here, e.g. "
                                      "tcp://127.0.0.1:0; a non-loopback address lets workers on other machines in")
    worker_advertise: str | None = Field(None, description="the endpoint workers are told to connect to when "
                                         "worker_listen is reached by another address (NAT, port forward, proxy)")
    local_workers_via_curve: bool = Field(False, description="the local pool's workers join over worker_listen too "
                                          "(tries the remote path on one machine)")
    otlp_endpoint: str | None = Field(None, description="send traces over OTLP/HTTP to this collector, e.g. "
                                      "http://127.0.0.1:4318 (needs tagentd[otel]); unset = no traces")
    trace_url: str | None = Field(None, description="a run's trace in your trace viewer, shown by tagent status, "
                                  "e.g. http://127.0.0.1:16686/trace/{trace_id}")
    web: bool = Field(False, description="serve the dashboard (a separate process the daemon supervises)")
    web_host: str = Field("127.0.0.1", min_length=1, description="the dashboard's address; other than loopback exposes it")
    web_port: int = Field(0, ge=0, le=65535, description="the dashboard's port; 0 = a free port picked at start")
    executor: Literal["local", "ray"] = Field("local", description="where steps run: worker processes here, or a Ray cluster")
    ray_address: str | None = Field(None, description="the Ray cluster to join ('auto', 'ray://head:10001'); none = start one here")
    ray_runtime_env: dict[str, Any] = Field(default_factory=dict, description="[ray_runtime_env]: Ray's runtime_env for the workers")

    @field_validator("runtime_dir", "state_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return absolute_path(value)

    @field_validator("watch_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()]
        return value

    @field_validator("watch_dirs", mode="after")
    @classmethod
    def _absolute_dirs(cls, value: list[Path]) -> list[Path]:
        return [absolute_path(p) for p in value]

    @field_validator("max_message_bytes", "wal_segment_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _SIZE.match(value)
            if match is None:
                raise ValueError(f"must be a size in bytes such as 16777216 or '16MiB', got {value!r}")
            return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]
        return value

    @field_validator("log_level", mode="after")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return level

    @field_validator("worker_listen", "worker_advertise", mode="after")
    @classmethod
    def _worker_listen(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        host, _, port = value.removeprefix("tcp://").rpartition(":")
        if not value.startswith("tcp://") or not host or not port.isdigit():
            raise ValueError(f"must be a tcp endpoint such as tcp://127.0.0.1:0 or tcp://0.0.0.0:7001, got {value!r}")
        return value

    @field_validator("model", mode="after")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return (value.strip() or None) if value is not None else None

    @field_validator("otlp_endpoint", "trace_url", mode="after")
    @classmethod
    def _url(cls, value: str | None, info: Any) -> str | None:
        value = (value.strip() or None) if value is not None else None
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        if value is not None and info.field_name == "trace_url" and "{trace_id}" not in value:
            raise ValueError(f"must contain {{trace_id}} where the trace id goes, got {value!r}")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise _CrossFieldError(
                "heartbeat_timeout",
                f"must be greater than heartbeat_interval ({self.heartbeat_interval})",
            )
        if self.local_workers_via_curve and self.worker_listen is None:
            raise _CrossFieldError("local_workers_via_curve", "needs worker_listen (the endpoint they join over)")
        return self

    @field_validator("endpoints", mode="after")
    @classmethod
    def _endpoint_names(cls, value: dict[str, EndpointSettings]) -> dict[str, EndpointSettings]:
        return LLMConfig(endpoints=value).endpoints

    def llm_config(self) -> LLMConfig:
        return LLMConfig(endpoints=self.endpoints, price_overrides=self.price_overrides)

    def breaker_rules(self) -> BreakerRules:
        """Each circuit breaker's rule: `[breaker]`, then an endpoint's `breaker = {...}` or `[breakers.NAME]`."""
        return BreakerRules(default=self.breaker, endpoints=self.endpoints, named=self.breakers)

    def worker_llm_args(self) -> list[str]:
        """The worker command-line flag carrying endpoints and prices (names of key variables, never keys)."""
        if not (self.endpoints or self.price_overrides):
            return []
        return ["--llm", self.llm_config().model_dump_json(exclude_defaults=True)]

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


FIELDS: tuple[str, ...] = tuple(Settings.model_fields)


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
        settings = Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
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
    """Strings go to pydantic's lax parsing; paths are made absolute against the cwd."""
    if field in ("runtime_dir", "state_dir"):
        return absolute_path(Path(raw))
    if field == "watch_dirs":
        return [absolute_path(Path(p)) for p in raw.split(os.pathsep) if p.strip()]
    if field in ("endpoints", "price_overrides", "spaces", "mailboxes", "breaker", "breakers", "ray_runtime_env"):
        try:
            return json.loads(raw)
        except ValueError:
            return raw  # pydantic says what is wrong with it
    return raw


def _describe(exc: ValidationError, sources: dict[str, str]) -> str:
    """One line for all problems: 'config: workers: must be >= 1 (from env TAGENTD_WORKERS)'."""
    parts = []
    for error in exc.errors():
        ctx = error.get("ctx") or {}
        cross = ctx.get("error")
        if isinstance(cross, _CrossFieldError):
            field, problem = cross.field, cross.message
        else:
            field = str(error["loc"][0]) if error["loc"] else "settings"
            problem = _problem(error)
        where = ".".join(str(part) for part in error["loc"]) or field  # endpoints.local.max_concurrent
        parts.append(f"{where}: {problem} (from {sources.get(field, 'default')})")
    return "config: " + "; ".join(parts)


def _problem(error: Any) -> str:
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "greater_than":
        return f"must be > {ctx['gt']}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"must be a whole number, got {given!r}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, got {given!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {given!r}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg'][:1].lower()}{error['msg'][1:]}, got {given!r}"
