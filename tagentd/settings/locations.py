"""Where the daemon keeps things (config file, runtime dir, state dir, log file), found without the settings.

`tagentd status`, `stop` and `gc` only need to find a running daemon; loading the full settings
(tagentd.settings.config: asyncio, the LLM settings) would double their start-up time. The rules here are
the ones `config.load_settings` applies to these two paths, and config.py reads the file through
`read_config_file`, so both agree. Precedence, highest first: the flag, `TAGENTD_RUNTIME_DIR` /
`TAGENTD_STATE_DIR`, the config file (relative paths against the file's folder), the default of
tagent_client.wire.paths. Only the TOML syntax and these two values are checked here; the other
settings are checked where they are used (`tagentd start`, `tagentd config show`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tagent_client.errors import ConfigError
from tagent_client.wire import paths

LOG_FILE = "tagentd.log"


def absolute_path(path: Path) -> Path:
    """`~` expanded; relative paths taken against the current directory."""
    path = path.expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def relative_to(base: Path, value: str) -> Path:
    """A path from the config file: `~` expanded; relative paths taken against the file's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tagentd" / "tagentd.toml"


def read_config_file(config_path: Path | None) -> tuple[dict[str, Any], Path]:
    """The parsed TOML of `config_path` (None: the default file, which may be missing) and its absolute path.

    An explicit path must exist. Raises ConfigError with one line for a missing, unreadable or unparsable file.
    """
    explicit = config_path is not None
    path = absolute_path(Path(config_path)) if explicit else default_config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config: file {path} (from flag --config) does not exist; create it or drop --config") from None
        return {}, path
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}; check its permissions") from None
    import tomllib  # noqa: PLC0415 - most machines have no config file: no parser to load

    try:
        return tomllib.loads(raw.decode("utf-8")), path
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not UTF-8 text; fix the file or point --config elsewhere") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: cannot parse {path}: {exc}; fix the file or point --config elsewhere") from None


class Locations:
    """The runtime and state dirs as `load_settings` would resolve them (absolute paths)."""

    def __init__(self, config_path: Path | None = None, runtime_dir: Path | None = None) -> None:
        data, path = read_config_file(config_path)
        self.runtime_dir = self._resolve("runtime_dir", runtime_dir, data, path, paths.runtime_dir)
        self.state_dir = self._resolve("state_dir", None, data, path, paths.state_dir)

    @property
    def log_file(self) -> Path:
        return self.state_dir / LOG_FILE

    @staticmethod
    def _resolve(field: str, flag: Path | None, data: dict[str, Any], path: Path, default: Any) -> Path:
        if flag is not None:
            return absolute_path(Path(flag))
        env = os.environ.get(f"TAGENTD_{field.upper()}", "")
        if env.strip():
            return absolute_path(Path(env))
        for key in (field, field.replace("_", "-")):
            if key in data:
                value = data[key]
                if not isinstance(value, str):
                    raise ConfigError(f"config: {key}: must be a path, got {value!r} (from file {path})")
                return absolute_path(relative_to(path.parent, value))
        return absolute_path(default())
