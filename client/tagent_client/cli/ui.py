"""`tagent ui`: the dashboard's address with its login token, and a browser opened on it when asked."""

from __future__ import annotations

import time

import click

from ..errors import ConfigError, TagentError
from .common import Session, pass_session

STARTING_WAIT = 10.0  # seconds to wait for a dashboard that is (re)starting: its imports take a second or two
NOT_SERVED = ("tagentd runs without the dashboard; start it with 'tagentd start --web' "
              "or web = true in tagentd.toml")


def login_url(web: dict[str, object]) -> str:
    """The dashboard's address with `?token=` (read from the 0600 token file the daemon's status names)."""
    token_file = str(web.get("token_file") or "")
    try:
        with open(token_file, encoding="ascii") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the dashboard's token file {token_file}: {exc.strerror}; "
                          f"run 'tagent ui' as the user who runs tagentd") from None
    return f"{web['url']}?token={token}"


@click.command()
@click.option("--open", "open_browser", is_flag=True, help="Open the dashboard in a web browser too.")
@pass_session
def ui(session: Session, open_browser: bool) -> None:
    """Print the dashboard's address with its login token (keep it private); --open opens it in a browser."""
    deadline = time.monotonic() + STARTING_WAIT
    while True:
        web = session.client().daemon_status().stats.get("web") or {}
        if not web.get("enabled"):
            raise ConfigError(NOT_SERVED)
        if web.get("url"):
            break
        if time.monotonic() >= deadline:
            raise TagentError(f"the dashboard did not come up within {STARTING_WAIT:g} s (restarted "
                              f"{web.get('restarts', 0)} times); see the daemon's log ('tagentd status' names it)")
        time.sleep(0.1)
    url = login_url(web)
    click.echo(url)
    if open_browser:
        import webbrowser  # only --open needs it

        if not webbrowser.open(url):
            click.echo("tagent: no web browser found here; open the address above in one", err=True)


COMMANDS = [ui]
