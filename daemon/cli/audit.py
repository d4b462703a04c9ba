"""Commands for whoever looks back at what the daemon did: ``history`` (the audit log),
``undo``, ``feedback`` (the user's corrections as a dataset; the correction memory:
list, forget, import) and ``backup``.

They read the state database without taking the daemon's lock (``undo`` excepted: it
writes), so they work while the daemon runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from daemon.cli.common import (
    AccountFailures,
    Group,
    config_options,
    dry_run_option,
    json_option,
    limit_option,
    load_settings,
    path_option,
)
from daemon.errors import ConfigError

if TYPE_CHECKING:
    from daemon.core.undo import UndoResult
    from daemon.mailbox import Mailbox
    from daemon.store.records import Decision
    from daemon.store.state import StateStore


def since_iso(value: str | None) -> str | None:
    """``--since`` as the audit log's timestamps: a duration (``2h``, ``7d``) back from
    now, or an ISO date/time (UTC when it has no zone)."""
    if value is None:
        return None
    from datetime import UTC, datetime

    from daemon.core.undo import parse_duration
    from daemon.core.undo import since_iso as iso_ago
    from daemon.store.records import iso_utc

    if value[-1:].isalpha() and value[:-1].strip().isdigit():
        return iso_ago(parse_duration(value))
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--since {value!r} is neither an ISO date nor a duration") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return iso_utc(parsed)


@click.command()
@config_options
@click.option("--account", default=None)
@click.option("--since", default=None, help="ISO date/time, or a duration like 2h or 7d.")
@json_option()
@limit_option()
def history(
    config_path: Path | None,
    overrides: tuple[str, ...],
    account: str | None,
    since: str | None,
    as_json: bool,
    limit: int | None,
) -> None:
    """Show the audit log of decisions."""
    from daemon.store.state import StateStore

    settings = load_settings(config_path, overrides)
    since_at = since_iso(since)
    with StateStore(
        settings.state, password=settings.state_password(), read_only=True, lock=False
    ) as store:
        rows = store.history(account=account, since=since_at, limit=limit)
    for d in rows:
        if as_json:
            click.echo(json.dumps(d.to_json()))
            continue
        conf = f"{d.confidence:.2f}" if d.confidence is not None else "-"
        memory = (
            f" (memory entry {d.memory_id}, similarity {d.memory_similarity:.2f})"
            if d.memory_id is not None and d.memory_similarity is not None
            else ""
        )
        click.echo(
            f"{d.id:>6} {d.created_at} {d.account}/{d.folder} uid {d.uid} "
            f"{d.intent or '-'} {conf}{memory} {d.action or '-'} [{d.status}]"
            f"{' ' + d.reason if d.reason else ''}"
        )


@click.group(cls=Group)
def feedback() -> None:
    """Corrections learned from the user's moves (accounts with feedback: true)."""


@feedback.command("export")
@path_option(
    "--output",
    required=True,
    help="CSV file to write (banking77 columns text,category plus provenance).",
)
@click.option("--account", default=None, help="Only this account's corrections.")
@config_options
def feedback_export(
    output: Path, account: str | None, config_path: Path | None, overrides: tuple[str, ...]
) -> None:
    """Write the recorded corrections as a dataset for `cleaninbox retrain`."""
    from daemon.store.corrections_csv import write_corrections_csv
    from daemon.store.state import StateStore

    settings = load_settings(config_path, overrides)
    with StateStore(
        settings.state, password=settings.state_password(), read_only=True, lock=False
    ) as store:
        rows = store.corrections(account)
    written = write_corrections_csv(output, rows)
    click.echo(f"{written} correction(s) written to {output}")


@feedback.command("list")
@click.option("--account", default=None, help="Only this account's entries ('*': the shared pool).")
@json_option()
@config_options
def feedback_list(
    account: str | None, as_json: bool, config_path: Path | None, overrides: tuple[str, ...]
) -> None:
    """Show the correction memory: what each correction taught, how often it decided."""
    from daemon.store.state import StateStore

    settings = load_settings(config_path, overrides)
    with StateStore(
        settings.state, password=settings.state_password(), read_only=True, lock=False
    ) as store:
        entries = store.memory_entries(None if account is None else [account])
    for e in entries:
        if as_json:
            click.echo(json.dumps(e.to_json()))
            continue
        excerpt = " ".join(e.text.split())[:60]
        click.echo(
            f"{e.id:>6} {e.account} {e.said} -> {e.chosen} used {e.uses}x "
            f"(last {e.used_at or 'never'}) model {e.model_version}: {excerpt}"
        )
    if not entries and not as_json:
        click.echo("the correction memory is empty")


@feedback.command("forget")
@click.argument("entry_id", type=int, required=False)
@click.option("--all", "everything", is_flag=True, help="Clear the whole memory.")
@click.option("--account", default=None, help="With --all: only this account's entries.")
@config_options
def feedback_forget(
    entry_id: int | None,
    everything: bool,
    account: str | None,
    config_path: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Forget a memory entry, or all of them (and the corrections they came from:
    retraining will not learn them either). A running daemon stops following them at
    its next batch."""
    from daemon.store.state import StateStore

    if (entry_id is None) == (not everything):
        raise ConfigError("give an entry id (see `cleaninbox feedback list`) or --all")
    if account is not None and not everything:
        raise ConfigError("--account goes with --all")
    settings = load_settings(config_path, overrides)
    with StateStore(settings.state, password=settings.state_password(), lock=False) as store:
        if entry_id is None:
            count = store.forget_all(account)
            click.echo(f"forgot {count} entr{'y' if count == 1 else 'ies'}")
            return
        entry = store.forget(entry_id)
    if entry is None:
        raise ConfigError(f"no memory entry {entry_id} (see `cleaninbox feedback list`)")
    click.echo(f"forgot entry {entry_id}: {entry.said} -> {entry.chosen} ({entry.account})")


@feedback.command("import")
@click.argument("csv_file", type=click.Path(path_type=Path))
@click.option(
    "--account",
    default=None,
    help="The account these corrections belong to (default: the pool every account uses).",
)
@config_options
def feedback_import(
    csv_file: Path, account: str | None, config_path: Path | None, overrides: tuple[str, ...]
) -> None:
    """Add corrections from a CSV (the `feedback export` format: text, category) to the
    correction memory of the settings' state, embedded by the settings' model."""
    from daemon.core.memory import CorrectionMemory
    from daemon.core.runtime import classifier_for
    from daemon.store.corrections_csv import read_corrections_csv
    from daemon.store.records import SHARED_MEMORY
    from daemon.store.state import StateStore

    settings = load_settings(config_path, overrides)
    if account is not None and account not in {a.name for a in settings.accounts}:
        raise ConfigError(f"--account {account!r}: no such account in the settings")
    examples = read_corrections_csv(csv_file)
    classifier = classifier_for(settings)
    unknown = sorted({e.label for e in examples} - set(classifier.labels))
    if unknown:
        raise ConfigError(
            f"{csv_file}: intent(s) the model {classifier.version} does not know: "
            f"{', '.join(unknown[:5])}"
        )
    with StateStore(settings.state, password=settings.state_password(), lock=False) as store:
        memory = CorrectionMemory(store, settings.memory)
        if memory.thresholds(classifier) is None:
            raise ConfigError(
                f"the correction memory is off for model {classifier.version} "
                "(memory.enabled false, or a bundle without embeddings)"
            )
        learned = sum(
            memory.learn(account or SHARED_MEMORY, e.text, e.label, classifier, seen=True)
            is not None
            for e in examples
        )
    click.echo(
        f"{learned} correction(s) remembered, {len(examples) - learned} the model already "
        f"gets right, from {csv_file}"
    )


@click.command()
@click.argument("target", type=click.Path(path_type=Path))
@config_options
def backup(target: Path, config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Copy the state database (audit log, positions) to TARGET, safely while the daemon
    runs. Restore: stop the daemon, put the copy in place of the state file, start it."""
    from daemon.store.state import StateStore

    settings = load_settings(config_path, overrides)
    with StateStore(
        settings.state, password=settings.state_password(), read_only=True, lock=False
    ) as store:
        size = store.backup(target)
    click.echo(f"state {store.where} backed up to {target} ({size:,} bytes)")


@click.command()
@config_options
@click.option(
    "--since", "since_duration", default=None, help="Undo decisions of the last 2h, 1d..."
)
@click.option("--decision", "decision_id", type=int, default=None, help="Undo one decision.")
@dry_run_option("Show what would be undone.")
def undo(
    config_path: Path | None,
    overrides: tuple[str, ...],
    since_duration: str | None,
    decision_id: int | None,
    dry_run: bool,
) -> None:
    """Put messages back where they were, using the audit log.

    Exit status: 0 when everything asked for was undone; 1 when a decision could not be
    undone, or an account failed (one line on stderr; its remaining decisions are left as
    they are, the other accounts' are still undone); 70 for a bug."""
    from daemon.core.undo import parse_duration, undoable
    from daemon.core.undo import since_iso as iso_ago
    from daemon.mailbox import open_mailbox
    from daemon.metrics import Metrics
    from daemon.service.faults import command_hooks
    from daemon.service.leases import leases_for
    from daemon.store.state import StateStore

    if (since_duration is None) == (decision_id is None):
        raise ConfigError("give exactly one of --since DURATION or --decision ID")
    settings = load_settings(config_path, overrides)
    since = iso_ago(parse_duration(since_duration)) if since_duration else None
    boxes: dict[str, Mailbox] = {}

    with StateStore(settings.state, password=settings.state_password()) as store:
        todo = undoable(store, since=since, decision_id=decision_id)
        touched = {d.account for d in todo}
        # Replicas on PostgreSQL: act only on accounts whose leases this command holds.
        with leases_for(store, settings, set() if dry_run else touched, Metrics()) as keeper:
            guards = {name: keeper.guard(name) for name in touched} if keeper else {}

            def mailbox_for(name: str) -> Mailbox:
                if name not in boxes:
                    boxes[name] = open_mailbox(
                        settings.account(name), on_command=command_hooks(guards.get(name))
                    )
                    boxes[name].open()
                return boxes[name]

            try:
                results, stopped = _undo_by_account(store, todo, mailbox_for, dry_run)
            finally:
                for box in boxes.values():
                    box.close()
    failures = AccountFailures()
    for account, (exc, left) in stopped.items():
        failures.caught(account, exc, note=f"{left} decision(s) not undone")
    for r in results:
        click.echo(
            f"{r.decision.id:>6} {r.decision.account}/{r.decision.folder} "
            f"{r.decision.message_id or '-'}: {r.status}: {r.detail}"
        )
    click.echo(
        f"{sum(r.status == 'done' for r in results)} undone, "
        f"{sum(r.status == 'failed' for r in results)} failed"
        f"{f', {sum(left for _, left in stopped.values())} not tried' if stopped else ''}"
        f"{', dry run' if dry_run else ''}"
    )
    failures.exit(at_least=1 if any(r.status == "failed" for r in results) else 0)


def _undo_by_account(
    store: StateStore,
    todo: list[Decision],
    mailbox_for: Callable[[str], Mailbox],
    dry_run: bool,
) -> tuple[list[UndoResult], dict[str, tuple[Exception, int]]]:
    """Undo ``todo`` one decision at a time, so an account whose server (or anything else)
    fails stops only its own decisions. The results, and for each stopped account its
    error and how many of its decisions were not undone."""
    from daemon.core.undo import undo as run_undo

    results: list[UndoResult] = []
    stopped: dict[str, tuple[Exception, int]] = {}
    for d in todo:
        if d.account in stopped:
            exc, left = stopped[d.account]
            stopped[d.account] = (exc, left + 1)
            continue
        try:
            results += run_undo(store, [d], mailbox_for, dry_run=dry_run)
        except Exception as exc:
            stopped[d.account] = (exc, 1)
    return results, stopped
