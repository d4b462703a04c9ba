"""Replaying the journal: what the cycle does when the server or the process surprised it.

- :meth:`Recovery.reconcile`: before every cycle, each ``pending`` decision (journaled,
  then interrupted by a crash or a lost connection) is settled against the server with
  :func:`daemon.core.actions.settle`: finished, found finished, or failed with a reason.
- :meth:`Recovery.verify_arrivals`: after acting, each destination is checked once: a
  message another client moved or deleted just before our MOVE is not there, and its
  decision becomes ``failed: vanished``. A server whose answer cannot tell is not taken
  for a vanished message: the check is skipped with one line.
- :meth:`Recovery.renumbered`: the folder's UIDVALIDITY changed, so stored UIDs are void;
  messages are re-identified by Message-ID and only the undecided recent ones are
  returned for triage.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from daemon.core.accounting import Accounting
from daemon.core.actions import VANISHED, Journaled, Plan, reverted, settle
from daemon.mailbox.base import FolderStatus, Mailbox, ServerAnswerError
from daemon.store.base import Store
from daemon.store.records import Decision, FolderState, Status

log = structlog.get_logger(__name__)

#: How far the server's clock may be behind ours (UIDVALIDITY re-identification).
CLOCK_SKEW = timedelta(minutes=5)


@dataclass
class Arrivals:
    """Per folder pass: what was moved where, to verify, and each destination's UIDNEXT
    before acting (read once per destination and pass: an earlier value is a lower, still
    correct, floor)."""

    uidnext: dict[str, int] = field(default_factory=dict)
    moved: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def expect(self, destination: str, decision_id: int, message_id: str) -> None:
        self.moved.setdefault(destination, []).append((decision_id, message_id))


@dataclass(frozen=True)
class Renumbered:
    """The outcome of re-identifying a folder whose UIDVALIDITY changed."""

    todo: list[int]
    note: str


class Recovery:
    def __init__(
        self,
        store: Store,
        accounting: Accounting,
        state: Callable[[], AbstractContextManager[Store]],
    ) -> None:
        self.store = store
        self.accounting = accounting
        self._state = state

    def reconcile(self, account: str, mailbox: Mailbox) -> int:
        """Finish or settle every pending decision of ``account`` against the server."""
        pending = self.store.pending(account)
        for decision in pending:
            outcome, status, reason = self._settle(mailbox, decision)
            with self._state() as store:
                store.finish([decision.id], status, reason)
            self.accounting.reconciled(account, outcome)
            log.warning(
                "reconciled",
                folder=decision.folder,
                uid=decision.uid,
                message_id=decision.message_id,
                outcome=outcome,
                status=status,
                reason=reason,
            )
        return len(pending)

    def _settle(self, mailbox: Mailbox, decision: Decision) -> tuple[str, Status, str]:
        if decision.kind == "undo":
            return self._settle_undo(mailbox, decision)
        settled = settle(mailbox, Journaled.of(decision), Plan.of(decision))
        return settled.outcome, "done" if settled.done else "failed", settled.reason

    def _settle_undo(self, mailbox: Mailbox, undo: Decision) -> tuple[str, Status, str]:
        """An interrupted undo is done if its message is already back where it came from
        (the move back is its last step); otherwise the user runs it again."""
        triage = self.store.get(undo.undo_of) if undo.undo_of is not None else None
        if triage is not None and reverted(mailbox, Journaled.of(triage), Plan.of(triage)):
            return "completed", "done", "completed after restart: the message was moved back"
        return "interrupted", "failed", "interrupted before it finished; run it again"

    def verify_arrivals(self, account: str, mailbox: Mailbox, arrivals: Arrivals) -> int:
        """Mark moved messages that did not arrive as failed; returns how many."""
        vanished: list[tuple[int, Status, str | None]] = []
        for destination, moved in arrivals.moved.items():
            floor = arrivals.uidnext.get(destination, 1)
            try:
                arrived = set(mailbox.message_ids_from(destination, floor).values())
            except ServerAnswerError as exc:  # the server acknowledged the moves: keep them
                log.warning("arrivals_unverified", destination=destination, error=str(exc))
                continue
            for decision_id, message_id in moved:
                if message_id not in arrived:
                    vanished.append((decision_id, "failed", VANISHED))
                    log.warning("vanished", message_id=message_id, destination=destination)
        arrivals.moved.clear()
        if vanished:
            self.accounting.error(account, "vanished", len(vanished))
            with self._state() as store:
                store.finish_each(vanished)
        return len(vanished)

    def renumbered(
        self, account: str, mailbox: Mailbox, saved: FolderState, status: FolderStatus
    ) -> Renumbered:
        """Which messages of a renumbered folder to triage.

        Those already decided (by Message-ID) are left alone; the rest are triaged if they
        were delivered since the last successful cycle, and left alone (as on a first
        start) if older. Nothing is done to a stale UID.
        """
        folder = saved.folder
        since = _parse_time(saved.updated_at)
        with self.accounting.stage("fetch"):
            # SEARCH SINCE is by date in the server's time zone: a day earlier, then filtered.
            day = (since - timedelta(days=1)).date().isoformat() if since else None
            uids = mailbox.uids_since(folder, day)
            identities = mailbox.identify(folder, uids)
        decided = self.store.decided_message_ids(
            account, [i.message_id for i in identities.values() if i.message_id]
        )
        todo: list[int] = []
        for uid in sorted(identities):
            identity = identities[uid]
            if identity.message_id and identity.message_id in decided:
                continue
            if since and identity.internal_date and identity.internal_date < since - CLOCK_SKEW:
                continue
            todo.append(uid)
        log.warning(
            "uidvalidity_changed",
            stored=saved.uidvalidity,
            server=status.uidvalidity,
            recognised=sum(1 for i in identities.values() if i.message_id in decided),
            to_triage=len(todo),
            action="stored UIDs are void; messages re-identified by Message-ID",
        )
        self.accounting.error(account, "uidvalidity_changed")
        note = (
            f"{folder}: UIDVALIDITY changed ({saved.uidvalidity} -> {status.uidvalidity}); "
            f"{len(todo)} message(s) since the last cycle re-identified as new"
        )
        return Renumbered(todo, note)


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
