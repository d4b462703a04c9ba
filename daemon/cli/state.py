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


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per account.")
@config_options
def leases(as_json: bool, config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Which replica holds which account (a PostgreSQL state shared by replicas)."""
    import json

    from daemon.store.leases import LeaseTable
    from daemon.store.state import StateStore

    settings = load_settings(config_path, overrides)
    if isinstance(settings.state, Path):
        raise ConfigError(
            f"the state is a SQLite file ({settings.state}): one daemon holds every account"
        )
    with StateStore(
        settings.state, password=settings.state_password(), read_only=True, lock=False
    ) as store:
        rows = LeaseTable(store.database).all()
    configured = {a.name for a in settings.accounts}
    for row in rows:
        held = row.owner is not None and row.seconds_left > 0
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "account": row.account,
                        "owner": row.owner if held else None,
                        "epoch": row.epoch,
                        "expires_in": round(row.seconds_left, 1),
                        "configured": row.account in configured,
                    }
                )
            )
            continue
        state = (
            f"held by {row.owner}, {row.seconds_left:.0f} s left"
            if held
            else f"unheld for {-row.seconds_left:.0f} s"
        )
        note = "" if row.account in configured else "  (not in these settings)"
        click.echo(f"{row.account:24} epoch {row.epoch:>5}  {state}{note}")
    for name in sorted(configured - {r.account for r in rows}):
        if as_json:
            click.echo(json.dumps({"account": name, "owner": None, "configured": True}))
        else:
            click.echo(f"{name:24} no lease yet (no replica has started with it)")
