"""The `tagentd` command's own behaviour: finding the daemon without the full settings, gc, inspect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tagentd.settings.config import load_settings
from tagentd.settings.locations import Locations

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("file_text, env, flag", [
    ("", {}, None),
    ('runtime_dir = "rt-from-file"\nstate_dir = "~/st-from-file"\n', {}, None),
    ('runtime-dir = "/abs/rt"\n', {}, None),
    ('runtime_dir = "rt-from-file"\n', {"TAGENTD_RUNTIME_DIR": "rt-from-env", "TAGENTD_STATE_DIR": "st-env"}, None),
    ('runtime_dir = "rt-from-file"\n', {"TAGENTD_RUNTIME_DIR": "rt-from-env"}, Path("rt-from-flag")),
    ("", {"XDG_RUNTIME_DIR": "/xdg-run", "XDG_STATE_HOME": "/xdg-state"}, None),
], ids=["defaults", "file, relative and ~", "file, dashed key", "env over file", "flag over env", "XDG"])
def test_locations_agree_with_the_full_settings(file_text: str, env: dict[str, str], flag: Path | None,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a config file, environment and flag
    for name in ("TAGENTD_RUNTIME_DIR", "TAGENTD_STATE_DIR", "XDG_RUNTIME_DIR", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "etc" / "tagentd.toml"
    config.parent.mkdir()
    config.write_text(file_text)
    # When `tagentd status` finds the dirs without pydantic, and `tagentd start` loads every setting
    light = Locations(config, flag)
    settings, _ = load_settings(config, {"runtime_dir": flag})
    # Then both find the same daemon, and the same log file
    assert light.runtime_dir == settings.runtime_dir and light.runtime_dir.is_absolute()
    assert light.state_dir == settings.state_dir
    assert light.log_file == settings.log_file


def test_status_and_stop_ignore_a_bad_setting_they_do_not_use_but_not_a_broken_file(tmp_path: Path) -> None:
    # Given a config file with a bad worker count, then one that is not TOML
    config = tmp_path / "tagentd.toml"
    config.write_text('workers = 0\nruntime_dir = "rt"\n')
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path))
    env.pop("TAGENTD_RUNTIME_DIR", None)
    # When `tagentd status` runs with it
    done = subprocess.run([sys.executable, "-m", "tagentd", "status", "--config", str(config)], env=env, text=True,
                          capture_output=True, timeout=60, check=False)
    # Then it looks for the daemon where the file says (none runs there: exit 3)
    assert done.returncode == 3 and f"runtime dir {tmp_path / 'rt'}" in done.stdout, done
    # and a file that does not parse is still one line and the config exit status
    config.write_text("runtime_dir = \n")
    done = subprocess.run([sys.executable, "-m", "tagentd", "stop", "--config", str(config)], env=env, text=True,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 9 and done.stderr.startswith(f"tagentd: config: cannot parse {config}"), done
