"""Commands for whoever runs the daemon: ``run``, ``once``, ``backfill``, ``auth`` and
``check-config``, plus the per-account summary table that ``once``, ``backfill`` and the
demo print.

Each command is a thin layer over :class:`~daemon.service.supervisor.Service` and the
service's checks; the service is imported only when a command runs, so ``--help`` stays
quick.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click

from daemon.cli.common import (
    AccountFailures,
    config_options,
    dry_run_option,
    limit_option,
    load_settings,
    open_service,
)

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

    from daemon.config.settings import Account
    from daemon.core.cycle import CycleReport
    from daemon.service.supervisor import Service


@click.command()
@config_options
@dry_run_option()
def run(config_path: Path | None, overrides: tuple[str, ...], dry_run: bool) -> None:
    """Run the daemon until SIGTERM."""
    from daemon.config.settings import load_settings as read_settings

    settings = load_settings(config_path, overrides)

    def accounts() -> list[Account]:  # SIGHUP: the settings file and accounts_dir again
        return read_settings(config_path, list(overrides)).accounts

    service = open_service(settings, dry_run, reload_accounts=accounts)
    sys.exit(service.run())


def print_summary(reports: Mapping[str, CycleReport], dry_run: bool) -> None:
    """One row per account: what the cycle did, and its error or notes."""
    click.echo(
        f"{'account':<16} {'new':>6} {'moved':>6} {'tagged':>6} {'left':>6} "
        f"{'abstain':>7} {'skipped':>7} {'failed':>6} {'seconds':>8}  status"
    )
    for name, r in reports.items():
        left = r.actions.get("none", 0)
        click.echo(
            f"{name:<16} {r.new:>6} {r.actions.get('move', 0):>6} "
            f"{r.actions.get('tag', 0) + r.actions.get('copy', 0):>6} {left:>6} "
            f"{r.abstained:>7} {r.skipped:>7} {r.failed:>6} {r.seconds:>8.2f}  "
            f"{'error: ' + r.error if r.error else ('dry run' if dry_run else 'ok')}"
        )
        for note in r.notes:
            click.echo(f"  note: {note}")
        if r.intents:
            top = ", ".join(f"{k} {v}" for k, v in r.intents.most_common(5))
            click.echo(f"  top intents: {top}")


@click.command()
@config_options
@dry_run_option()
@click.option("--timings", is_flag=True, help="Also print where the time went, by stage.")
def once(
    config_path: Path | None, overrides: tuple[str, ...], dry_run: bool, timings: bool
) -> None:
    """One cycle over every account, then exit (prints a summary table).

    Exit status: 0 when every account's cycle ran; 1 when one failed (one line each on
    stderr, the other accounts still run); 70 when one hit a bug."""
    import time

    settings = load_settings(config_path, overrides)
    service = open_service(settings, dry_run)
    failures = AccountFailures()
    started = time.perf_counter()
    try:
        reports = {
            name: _account_cycle(name, failures, functools.partial(service.cycle, name))
            for name in list(service.accounts)
        }
    finally:
        service.close()
    wall = time.perf_counter() - started
    print_summary(reports, service.dry_run)
    if timings:
        _print_timings(service, reports, wall)
    failures.exit()


def _account_cycle(
    name: str, failures: AccountFailures, cycle: Callable[[], CycleReport]
) -> CycleReport:
    """``cycle()`` of account ``name``; whatever it fails with becomes the account's error
    line, its summary row and the log's ``cycle_failed`` event, and the other accounts
    still run. (``Service.once`` catches only mailbox and lease errors: a bug or a
    database error would stop every account.)"""
    import structlog

    from daemon.core.cycle import CycleReport

    try:
        report = cycle()
    except Exception as exc:
        error = failures.caught(name, exc)
        structlog.get_logger(__name__).error("cycle_failed", account=name, error=error)
        return CycleReport(name, error=error)
    if report.error:
        failures.said(name, report.error)
    return report


def _print_timings(service: Service, reports: Mapping[str, CycleReport], wall: float) -> None:
    """Where ``wall`` seconds went, by triage stage (``once --timings``)."""
    from daemon.metrics import STAGES

    stage = {s: service.triage.stage_seconds[s] for s in STAGES}
    decided = sum(r.decided for r in reports.values())
    click.echo(
        f"timings: {wall:.2f} s wall, {decided} messages, "
        f"{decided / wall if wall else 0:.1f} messages/s"
    )
    for name, seconds in stage.items():
        click.echo(f"  {name:<9} {seconds:8.2f} s  {seconds / wall * 100 if wall else 0:5.1f}%")
    other = wall - sum(stage.values())
    click.echo(f"  {'other':<9} {other:8.2f} s  {other / wall * 100 if wall else 0:5.1f}%")


@click.command()
@click.argument("account")
@config_options
@click.option("--no-browser", is_flag=True, help="Only print the address to open.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for the browser to come back.",
)
def auth(
    account: str,
    config_path: Path | None,
    overrides: tuple[str, ...],
    no_browser: bool,
    timeout: float,
) -> None:
    """Authorise ACCOUNT with OAuth2 (Google, Microsoft, or any provider) and save its
    refresh token to oauth2.refresh_token_file."""
    from daemon.mailbox.authflow import authorize

    settings = load_settings(config_path, overrides)
    where = authorize(
        settings.account(account),
        open_browser=not no_browser,
        timeout=timeout,
        say=lambda line: click.echo(line, nl=True),
    )
    click.echo(f"refresh token saved to {where}; the daemon uses it from its next login")


@click.command("check-config")
@config_options
@click.option("--connect", is_flag=True, help="Also log in to every account.")
def check_config(config_path: Path | None, overrides: tuple[str, ...], connect: bool) -> None:
    """Validate settings, the model bundle and the rules (and with --connect, logins).

    Exit status: 2 when something does not work (with --connect: one line per account
    that cannot be used), 70 for a bug."""
    from daemon.core.runtime import load
    from daemon.service.checks import check_logins

    settings = load_settings(config_path, overrides)
    loaded = load(settings)
    click.echo(f"settings ok: {len(settings.accounts)} account(s)")
    click.echo(
        f"model ok: {loaded.classifier.version} ({len(loaded.classifier.labels)} labels, "
        f"abstain below {loaded.classifier.threshold:.3f})"
    )
    click.echo(
        f"rules ok: {settings.rules} ({len(loaded.rules.spec.rules)} rules, folders: "
        f"{', '.join(sorted(loaded.rules.folders())) or 'none'})"
    )
    if not connect:
        return
    from daemon.store.database import is_database_url
    from daemon.store.state import StateStore

    if is_database_url(settings.state):  # replicas: the database they all need
        with StateStore(
            settings.state, password=settings.state_password(), read_only=True, lock=False
        ) as store:
            click.echo(f"state ok: {store.where} reachable")
    failures = AccountFailures(status=2)  # an account that cannot be used: bad settings
    for account in settings.accounts:
        try:  # one account at a time: an error check_logins does not catch ends its loop
            (check,) = check_logins([account])
        except Exception as exc:
            failures.caught(account.name, exc)
            continue
        if check.capabilities is None:
            failures.said(account.name, check.error or "login failed")
            continue
        caps = check.capabilities
        click.echo(
            f"account {check.account} ok: MOVE {'yes' if caps.move else 'no'}, "
            f"UIDPLUS {'yes' if caps.uidplus else 'no'}, "
            f"CONDSTORE {'yes' if caps.condstore else 'no'}"
            + (f", folders under {caps.folder_prefix}" if caps.folder_prefix else "")
        )
        if caps.broken:
            click.echo(
                "  advertised but not working, not used: "
                + "; ".join(f"{name} ({said})" for name, said in caps.broken.items())
            )
    failures.exit()


class _BarProgress:
    """Backfill's progress (told the total as folders are counted) on a click bar."""

    def __init__(self, bar: ProgressBar[int]) -> None:
        self.bar = bar

    def total(self, count: int) -> None:
        self.bar.length = (self.bar.length or 0) + count

    def advance(self, count: int) -> None:
        self.bar.update(count)


@click.command()
@config_options
@click.option("--account", required=True, help="Account to backfill.")
@click.option("--since", default=None, help="Only mail delivered on/after YYYY-MM-DD.")
@limit_option("At most N messages.")
@dry_run_option()
def backfill(
    config_path: Path | None,
    overrides: tuple[str, ...],
    account: str,
    since: str | None,
    limit: int | None,
    dry_run: bool,
) -> None:
    """Triage mail that was already there when CleanInbox started.

    Exit status: 0 when the cycle ran, 1 when it failed (one line on stderr), 70 for a bug."""
    from datetime import date

    from daemon.core.cycle import Mode
    from daemon.errors import ConfigError

    if since is not None:
        try:
            date.fromisoformat(since)
        except ValueError:
            raise ConfigError(f"--since {since!r} is not a date like 2026-01-31") from None
    settings = load_settings(config_path, overrides)
    settings.account(account)
    service = open_service(settings, dry_run)
    mode = Mode(dry_run=service.dry_run, backfill=True, since=since, limit=limit)
    failures = AccountFailures()

    def cycle() -> CycleReport:  # the bar's line is ended before an error line is printed
        with click.progressbar(
            length=0, label=f"backfill {account}", file=sys.stderr, show_pos=True
        ) as bar:
            return service.cycle(account, mode, progress=_BarProgress(bar))

    try:
        report = _account_cycle(account, failures, cycle)
    finally:
        service.close()
    print_summary({account: report}, service.dry_run)
    failures.exit()
