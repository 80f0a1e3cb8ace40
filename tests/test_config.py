"""Settings: precedence (defaults < file < env < flags), provenance, and one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tagent_client.errors import ConfigError, exit_code_for
from tagentd.cli.main import cli
from tagentd.settings.config import FIELDS, Settings, load_settings

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No TAGENTD_* from the caller's shell; XDG dirs point into tmp_path."""
    for name in list(os.environ):
        if name.startswith("TAGENTD_") or name == "TAGENT_MODEL":
            monkeypatch.delenv(name)
    for var in ("XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "XDG_STATE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    return tmp_path


def write_default_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "xdg_config_home" / "tagentd" / "tagentd.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_configured(tmp_path: Path) -> None:
    # Given no config file, no env vars and no flags
    # When the settings are loaded
    settings, sources = load_settings(None, {})
    # Then every value is the default and says so
    assert set(sources) == set(FIELDS)
    assert set(sources.values()) == {"default"}
    assert settings.runtime_dir == tmp_path / "xdg_runtime_dir" / "tagentd"
    assert settings.state_dir == tmp_path / "xdg_state_home" / "tagentd"
    assert settings.workers == (os.cpu_count() or 1)
    assert settings.worker_concurrency == 128
    assert settings.max_message_bytes == 16 * 1024 * 1024
    assert settings.durable is True and settings.model is None and settings.watch_dirs == []
    assert settings.log_file == settings.state_dir / "tagentd.log"


@pytest.mark.parametrize(
    ("env", "flag", "expected", "source"),
    [
        (None, None, 2, "file"),
        ("3", None, 3, "env TAGENTD_WORKERS"),
        ("3", 4, 4, "flag --workers"),
        (None, 4, 4, "flag --workers"),
    ],
)
def test_precedence_file_env_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None,
                                  flag: int | None, expected: int, source: str) -> None:
    # Given a config file setting workers = 2, and maybe an env var and a flag
    path = write_default_config(tmp_path, "workers = 2\n")
    if env is not None:
        monkeypatch.setenv("TAGENTD_WORKERS", env)
    # When the settings are loaded
    settings, sources = load_settings(None, {"workers": flag})
    # Then the highest layer that set it wins and is named
    assert settings.workers == expected
    assert sources["workers"] == (f"file {path}" if source == "file" else source)


def test_env_values_are_parsed_for_their_type(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Given env vars for a bool, a float, a size, a path list and a path
    monkeypatch.setenv("TAGENTD_DURABLE", "false")
    monkeypatch.setenv("TAGENTD_HEARTBEAT_INTERVAL", "0.25")
    monkeypatch.setenv("TAGENTD_MAX_MESSAGE_BYTES", "1MiB")
    monkeypatch.setenv("TAGENTD_WATCH_DIRS", f"{tmp_path}/a{os.pathsep}{tmp_path}/b")
    monkeypatch.setenv("TAGENTD_RUNTIME_DIR", str(tmp_path / "rt"))
    monkeypatch.setenv("TAGENTD_LOG_LEVEL", "debug")
    # When the settings are loaded
    settings, sources = load_settings(None, {})
    # Then each is typed and attributed to its variable
    assert settings.durable is False
    assert settings.heartbeat_interval == 0.25
    assert settings.max_message_bytes == 1024 * 1024
    assert settings.watch_dirs == [tmp_path / "a", tmp_path / "b"]
    assert settings.runtime_dir == tmp_path / "rt"
    assert settings.log_level == "DEBUG"
    assert sources["durable"] == "env TAGENTD_DURABLE"
    assert sources["runtime_dir"] == "env TAGENTD_RUNTIME_DIR"


def test_empty_env_var_counts_as_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Given empty TAGENTD_RUNTIME_DIR and TAGENTD_WORKERS (as `Environment=TAGENTD_X=` leaves them)
    monkeypatch.setenv("TAGENTD_RUNTIME_DIR", "")
    monkeypatch.setenv("TAGENTD_WORKERS", " ")
    # When loaded, Then they fall back like the client does (tagent_client.wire.paths), not to the cwd
    settings, sources = load_settings(None, {})
    assert settings.runtime_dir == tmp_path / "xdg_runtime_dir" / "tagentd"
    assert sources["runtime_dir"] == sources["workers"] == "default"


def test_model_from_tagent_model_and_tagentd_model_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given TAGENT_MODEL (shared with the client) set
    monkeypatch.setenv("TAGENT_MODEL", "test")
    # When loaded, Then it is the default model
    settings, sources = load_settings(None, {})
    assert (settings.model, sources["model"]) == ("test", "env TAGENT_MODEL")
    # Given TAGENTD_MODEL too, When loaded, Then the daemon-specific one wins
    monkeypatch.setenv("TAGENTD_MODEL", "openai:gpt-4o-mini")
    settings, sources = load_settings(None, {})
    assert (settings.model, sources["model"]) == ("openai:gpt-4o-mini", "env TAGENTD_MODEL")


def test_flags_name_their_flag(tmp_path: Path) -> None:
    # Given --no-durable, --watch and --state-dir flags
    flags = {"durable": False, "watch_dirs": [tmp_path / "in"], "state_dir": tmp_path / "st", "log_level": None}
    # When loaded
    settings, sources = load_settings(None, flags)
    # Then values apply, None means "not given", and the source is the flag as typed
    assert settings.durable is False and settings.watch_dirs == [tmp_path / "in"]
    assert sources["durable"] == "flag --no-durable"
    assert sources["watch_dirs"] == "flag --watch"
    assert sources["state_dir"] == "flag --state-dir"
    assert sources["log_level"] == "default"


def test_bad_env_value_is_one_line_naming_setting_and_source(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given TAGENTD_WORKERS=0
    monkeypatch.setenv("TAGENTD_WORKERS", "0")
    # When loaded, Then one line says what, why and where from
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {})
    assert caught.value.message == "config: workers: must be >= 1 (from env TAGENTD_WORKERS)"


def test_bad_file_value_names_the_file(tmp_path: Path) -> None:
    # Given a file with a non-boolean durable
    path = write_default_config(tmp_path, 'durable = "sometimes"\n')
    # When loaded, Then the error names the setting and the file
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {})
    assert caught.value.message.startswith("config: durable: must be true or false")
    assert f"(from file {path})" in caught.value.message
    assert "\n" not in caught.value.message


def test_heartbeat_timeout_must_exceed_interval() -> None:
    # Given a heartbeat timeout shorter than the interval, When loaded, Then it is refused by name
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"heartbeat_interval": 2.0, "heartbeat_timeout": 1.0})
    assert caught.value.message == (
        "config: heartbeat_timeout: must be greater than heartbeat_interval (2.0) (from flag --heartbeat-timeout)"
    )


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    # Given a file whose third line is broken
    path = write_default_config(tmp_path, "workers = 2\ndurable = true\nlog_level INFO\n")
    # When loaded, Then the error names the file and line 3
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {})
    assert str(path) in caught.value.message
    assert "line 3" in caught.value.message


def test_unknown_setting_in_file_suggests_the_right_one(tmp_path: Path) -> None:
    # Given a typo in the file
    write_default_config(tmp_path, "worker = 2\n")
    # When loaded, Then the error suggests the real name
    with pytest.raises(ConfigError, match=r"worker: unknown setting .*did you mean 'workers'\?"):
        load_settings(None, {})


def test_missing_explicit_config_is_an_error_but_missing_default_is_fine(tmp_path: Path) -> None:
    # Given neither the default file nor the explicit one exists
    # When loaded without --config, Then defaults apply
    load_settings(None, {})
    # When loaded with --config, Then it is an error naming the path
    with pytest.raises(ConfigError, match=r"nope\.toml .*does not exist"):
        load_settings(tmp_path / "nope.toml", {})


def test_relative_paths_in_file_are_relative_to_the_file(tmp_path: Path) -> None:
    # Given an explicit config file with relative dirs
    path = tmp_path / "etc" / "my.toml"
    path.parent.mkdir()
    path.write_text('state_dir = "state"\nwatch_dirs = ["inbox", "/abs/in"]\nmax-message-bytes = "2MiB"\n')
    # When loaded
    settings, sources = load_settings(path, {})
    # Then they resolve against the file's directory, and dashed keys work too
    assert settings.state_dir == tmp_path / "etc" / "state"
    assert settings.watch_dirs == [tmp_path / "etc" / "inbox", Path("/abs/in")]
    assert settings.max_message_bytes == 2 * 1024 * 1024
    assert sources["state_dir"] == f"file {path}"


def test_settings_forbid_unknown_fields() -> None:
    # Given a setting that does not exist, When settings are made of it, Then it is refused by name
    with pytest.raises(ValueError, match="bogus: unknown setting"):
        Settings.checked({"bogus": 1})
    with pytest.raises(TypeError, match="bogus"):
        Settings(bogus=1)  # type: ignore[call-arg]


def test_config_show_json_lists_every_setting_with_source(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an env var and a flag
    monkeypatch.setenv("TAGENTD_RECYCLE_AFTER", "100")
    # When `tagentd config show --json --workers 3` runs
    result = CliRunner().invoke(cli, ["config", "show", "--json", "--workers", "3"])
    # Then stdout is JSON with every setting, its value and its source
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == list(FIELDS)
    assert data["workers"] == {"value": 3, "source": "flag --workers"}
    assert data["recycle_after"] == {"value": 100, "source": "env TAGENTD_RECYCLE_AFTER"}
    assert data["durable"] == {"value": True, "source": "default"}


def test_cli_config_error_is_one_stderr_line_and_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a bad env value
    monkeypatch.setenv("TAGENTD_WORKERS", "many")
    # When any command loads the settings
    result = CliRunner().invoke(cli, ["config", "show"])
    # Then one line on stderr, the config exit code, nothing on stdout
    assert result.exit_code == exit_code_for("config") == 9
    assert result.stderr == "tagentd: config: workers: must be a whole number, got 'many' (from env TAGENTD_WORKERS)\n"
    assert result.stdout == ""


@pytest.mark.parametrize("var, raw, message", [
    ("TAGENTD_ON_CHANGE", "nope", "config: on_change: must be 'keep' or 'restart', got 'nope'"),
    ("TAGENTD_WEB_PORT", "70000", "config: web_port: must be between 0 and 65535, got 70000"),
    ("TAGENTD_MAILBOXES", '{"a": {"max_deliveries": 0}}', "config: mailboxes.a.max_deliveries: must be >= 1"),
    ("TAGENTD_BREAKER", '{"window": 0}', "config: breaker.window: must be > 0"),
    ("TAGENTD_BREAKERS", '{"pay": {"failure": 2}}', "config: breakers.pay.failure: unknown setting"),
    ("TAGENTD_MAX_MESSAGE_BYTES", "12 parsecs", "config: max_message_bytes: must be a size in bytes"),
    ("TAGENTD_LOAD_TIMEOUT", "soon", "config: load_timeout: must be a number, got 'soon'"),
    ("TAGENTD_OTLP_ENDPOINT", "127.0.0.1:4318", "config: otlp_endpoint: must start with http:// or https://"),
    ("TAGENTD_TRACE_URL", "http://127.0.0.1:16686/trace/", "config: trace_url: must contain {trace_id}"),
])
def test_every_kind_of_bad_value_is_one_line_naming_the_setting(monkeypatch: pytest.MonkeyPatch, var: str, raw: str,
                                                                message: str) -> None:
    # Given a bad value of a choice, a bounded number, a nested table's entry, a size or a number
    monkeypatch.setenv(var, raw)
    # When loaded, Then one line names the setting (with its table and entry) and the variable it came from
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {})
    assert caught.value.message.startswith(message) and caught.value.message.endswith(f"(from env {var})")
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("raw, value", [("on", True), ("yes", True), ("1", True), ("OFF", False), ("no", False)])
def test_booleans_from_the_environment_take_the_documented_words(monkeypatch: pytest.MonkeyPatch, raw: str,
                                                                  value: bool) -> None:
    # Given TAGENTD_DURABLE in any of the documented spellings, When loaded, Then it is that boolean
    monkeypatch.setenv("TAGENTD_DURABLE", raw)
    assert load_settings(None, {})[0].durable is value
