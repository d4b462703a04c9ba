"""``cleaninbox undo``: put messages back as they were, using the audit log.

Messages are found by Message-ID (their UIDs changed when they moved). What CleanInbox
added is removed (keywords, \\Flagged, \\Seen it set, copies it made); the message is
moved back to its source folder. Every undo is recorded write-ahead like any action, and
a restored message is not triaged again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from daemon.core.rules import Plan
from daemon.errors import ConfigError, ConnectionLostError, MailboxError
from daemon.mailbox.base import Mailbox
from daemon.store.state import Decision, NewDecision, StateStore

log = structlog.get_logger("cleaninbox.undo")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"duration {text!r} is not like 30m, 2h, 1d or 1w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def since_iso(delta: timedelta) -> str:
    return (datetime.now(UTC) - delta).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class UndoResult:
    decision: Decision
    status: str  # done, failed, dry-run
    detail: str


def undoable(
    store: StateStore, *, since: str | None = None, decision_id: int | None = None
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
        if Plan.from_json(d.plan).is_noop:
            continue
        out.append(d)
    return out


def _restore(mailbox: Mailbox, d: Decision, plan: Plan) -> str:
    if not d.message_id:
        raise MailboxError("the message has no Message-ID, so it cannot be found again")
    before = set((d.plan or {}).get("flags_before", []))
    where = plan.move or d.folder
    found = mailbox.find_message_id(where, d.message_id) if mailbox.folder_exists(where) else []
    if not found:
        raise MailboxError(f"message {d.message_id} is no longer in {where}")
    uid = found[-1]
    added = [k for k in plan.keywords if k not in before]
    added += [
        f
        for f, on in (("\\Flagged", plan.flag), ("\\Seen", plan.mark_read))
        if on and f not in before
    ]
    mailbox.remove_flags(where, [uid], added)
    for copy_folder in plan.copies:
        if mailbox.folder_exists(copy_folder):
            copies = mailbox.find_message_id(copy_folder, d.message_id)
            if copies:
                mailbox.delete(copy_folder, copies[-1:])
    if plan.move:
        mailbox.move(where, [uid], d.folder)
        return f"moved back from {plan.move} to {d.folder}"
    return f"removed {', '.join(added) or 'nothing'} in {d.folder}"


def undo(
    store: StateStore,
    decisions: list[Decision],
    mailbox_for: Callable[[str], Mailbox],
    *,
    dry_run: bool = False,
) -> list[UndoResult]:
    results = []
    for d in decisions:
        plan = Plan.from_json(d.plan or {"rule": d.rule or "?"})
        if dry_run:
            results.append(UndoResult(d, "dry-run", f"would undo: {plan.describe()}"))
            continue
        mailbox = mailbox_for(d.account)
        (undo_id,) = store.record(
            [
                NewDecision(
                    kind="undo",
                    account=d.account,
                    folder=plan.move or d.folder,
                    uidvalidity=d.uidvalidity,
                    uid=d.uid,
                    message_id=d.message_id,
                    size=d.size,
                    internal_date=d.internal_date,
                    intent=d.intent,
                    confidence=d.confidence,
                    abstain=d.abstain,
                    top_k=None,
                    model_version=d.model_version,
                    rule=d.rule,
                    action=f"undo: {plan.describe()}",
                    plan=None,
                    destination=d.folder,
                    dest_uidnext=None,
                    status="pending",
                    undo_of=d.id,
                )
            ]
        )
        try:
            detail = _restore(mailbox, d, plan)
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
