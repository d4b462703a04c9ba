"""``cleaninbox state``: operations on the state store itself (moving it to PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import click

from daemon.cli.common import Group, config_options, load_settings
from daemon.errors import ConfigError


@click.group(cls=Group)
def state() -> None:
    """Operate on the state store (decisions, folder positions, corrections)."""


@state.command()
@click.option(
    "--to",
    "target",
    required=True,
    metavar="URL",
    help="The PostgreSQL database to copy into (postgresql://user@host/db; empty).",
)
@click.option(
    "--password-env",
    default=None,
    metavar="VAR",
    help="Env var holding the target's password (else the URL's, or libpq's PGPASSWORD).",
)
@config_options
def migrate(
    target: str, password_env: str | None, config_path: Path | None, overrides: tuple[str, ...]
) -> None:
    """Copy the settings' SQLite state into an empty PostgreSQL database, verified by
    counts and checksums. Stop the daemon first (its lock is checked); afterwards set
    ``state:`` to the URL."""
    import os

    from daemon.config.settings import state_location
    from daemon.store.state import StateStore
    from daemon.store.transfer import copy_state

    settings = load_settings(config_path, overrides)
    if not isinstance(settings.state, Path):
        raise ConfigError(f"the settings' state is already a database URL ({settings.state})")
    try:
        if isinstance(state_location(target), Path):
            raise ValueError("a file path; give a postgresql:// URL")
    except ValueError as exc:
        raise ConfigError(f"--to {target}: {exc}") from None
    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            raise ConfigError(f"--password-env: environment variable {password_env} is not set")
    with (
        StateStore(settings.state) as source,
        StateStore(target, password=password) as destination,
    ):
        copies = copy_state(source, destination)
        where = destination.where
    for copy in copies:
        click.echo(f"{copy.table:12} {copy.rows:>9,} rows  sha256 {copy.sha256[:16]}")
    click.echo(f"state {settings.state} copied to {where}; set `state: {where}` in the settings")
