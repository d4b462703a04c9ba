"""``cleaninbox undo``: put messages back as they were, using the audit log.

Messages are found by Message-ID (their UIDs changed when they moved). What CleanInbox
added is removed (keywords, \\Flagged, \\Seen it set, copies it made); the message is
moved back to its source folder. Every undo is recorded write-ahead like any action, and
a restored message is not triaged again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import structlog

from daemon.core.actions import Journaled, Plan, revert
from daemon.errors import ConfigError, ConnectionLostError, MailboxError
from daemon.mailbox.base import Mailbox
from daemon.store.base import Store
from daemon.store.records import Decision, iso_utc

log = structlog.get_logger(__name__)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"duration {text!r} is not like 30m, 2h, 1d or 1w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def since_iso(delta: timedelta) -> str:
    return iso_utc(datetime.now(UTC) - delta)


@dataclass(frozen=True)
class UndoResult:
    decision: Decision
    status: str  # done, failed, dry-run
    detail: str


def undoable(
    store: Store, *, since: str | None = None, decision_id: int | None = None
) -> list[Decision]:
    """Triage decisions that changed something and are not undone yet."""
    if decision_id is not None:
        decision = store.get(decision_id)
        if decision is None:
            raise ConfigError(f"no decision with id {decision_id}")
        if decision.kind != "triage":
            raise ConfigError(f"decision {decision_id} is an undo itself")
        candidates = [decision]
    else:
        candidates = store.history(since=since, kind="triage")
    done = store.undone_ids()
    out = []
    for d in candidates:
        if d.id in done or d.status != "done" or not d.plan:
            continue
        if Plan.of(d).is_noop:
            continue
        out.append(d)
    return out


def undo(
    store: Store,
    decisions: list[Decision],
    mailbox_for: Callable[[str], Mailbox],
    *,
    dry_run: bool = False,
) -> list[UndoResult]:
    results = []
    for d in decisions:
        plan = Plan.of(d)
        if dry_run:
            results.append(UndoResult(d, "dry-run", f"would undo: {plan.describe()}"))
            continue
        mailbox = mailbox_for(d.account)
        (undo_id,) = store.record(
            [
                replace(
                    d.journaled(),
                    kind="undo",
                    folder=plan.move or d.folder,
                    top_k=None,
                    plan=None,
                    text=None,
                    reason=None,
                    action=f"undo: {plan.describe()}",
                    destination=d.folder,
                    status="pending",
                    undo_of=d.id,
                )
            ]
        )
        try:
            detail = revert(mailbox, Journaled.of(d), plan)
        except ConnectionLostError:
            raise
        except MailboxError as exc:
            store.finish([undo_id], "failed", str(exc))
            results.append(UndoResult(d, "failed", str(exc)))
            log.warning("undo_failed", decision=d.id, account=d.account, error=str(exc))
            continue
        store.finish([undo_id], "done", detail)
        results.append(UndoResult(d, "done", detail))
        log.info("undone", decision=d.id, account=d.account, message_id=d.message_id, detail=detail)
    return results
