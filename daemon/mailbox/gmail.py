"""Gmail: IMAP plus Google's extensions (https://developers.google.com/gmail/imap/imap-extensions),
detected by the ``X-GM-EXT-1`` capability.

- A "folder" in the rules is a Gmail label: ``move: Triage/Cards`` adds the label
  ``Triage/Cards`` with ``STORE +X-GM-LABELS`` and (``gmail_move: archive``, the default)
  removes the source's label (``\\Inbox`` for INBOX), which is Gmail's own meaning of
  "move". Adding a label that is there already is a no-op, so an interrupted action is
  simply done again. ``gmail_move: label`` only adds the label and leaves mail in the inbox.
- Nothing is ever marked ``\\Deleted`` or expunged: what Gmail does with an expunged
  message depends on a per-user setting (archive, trash, or delete forever).
- ``X-GM-MSGID`` (stable across labels, unlike UIDs) is the message identity in the state
  store and for reconciliation: ``X-GM-MSGID:<id>`` in the decisions' ``message_id``.
- Google's limits: 15 connections per account (checked in settings), 2,500 MB downloaded per
  day (``gmail_fetch_bytes_per_day``, counted in this process, per UTC day), and
  ``[THROTTLED]``/``[LIMIT]``/``[UNAVAILABLE]`` refusals backed off like a lost connection.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import structlog

from daemon.errors import MailboxError
from daemon.mailbox.imap import ImapMailbox, _chunks

log = structlog.get_logger(__name__)
PREFIX = "X-GM-MSGID:"


def identity(msgid: int) -> str:
    return f"{PREFIX}{msgid}"


class _DailyBudget:
    """Bytes fetched per UTC day, shared by an account's connections."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.day = ""
        self.used = 0
        self.lock = threading.Lock()

    def take(self, account: str, planned: int) -> None:
        with self.lock:
            today = datetime.now(UTC).date().isoformat()
            if today != self.day:
                self.day, self.used = today, 0
            if self.used + planned > self.limit:
                raise MailboxError(
                    f"account {account}: the daily Gmail download budget "
                    f"(gmail_fetch_bytes_per_day = {self.limit:,} bytes) is used up; "
                    "triage resumes after midnight UTC"
                )
            self.used += planned

    def give_back(self, unused: int) -> None:
        with self.lock:
            self.used = max(0, self.used - unused)


class GmailMailbox(ImapMailbox):
    _budgets: ClassVar[dict[str, _DailyBudget]] = {}  # per account, across connections

    def open(self) -> None:
        super().open()
        if "X-GM-EXT-1" not in self.capabilities.names:
            self.close()
            raise MailboxError(
                f"account {self.account}: {self.settings.host} does not offer X-GM-EXT-1, "
                "so it is not Gmail; use kind: imap"
            )

    @property
    def budget(self) -> _DailyBudget:
        budget = self._budgets.get(self.account)
        if budget is None or budget.limit != self.settings.gmail_fetch_bytes_per_day:
            budget = _DailyBudget(self.settings.gmail_fetch_bytes_per_day)
            self._budgets[self.account] = budget
        return budget

    def _label(self, folder: str) -> str:
        return "\\Inbox" if folder.upper() == "INBOX" else self._name(folder)

    # -- identity: X-GM-MSGID; the daily download budget --------------------------------------

    IDENTITY_ITEMS = ("X-GM-MSGID",)
    SERVER_IDENTITY = True

    def _identity_of(self, item: dict[bytes, Any]) -> str | None:
        return identity(int(item[b"X-GM-MSGID"])) if b"X-GM-MSGID" in item else None

    def _reserve(self, planned: int) -> None:
        self.budget.take(self.account, planned)

    def _release(self, unused: int) -> None:
        self.budget.give_back(unused)

    def find_message_id(self, folder: str, message_id: str) -> list[int]:
        if not message_id.startswith(PREFIX):
            return super().find_message_id(folder, message_id)
        self._ensure_selected(folder)
        with self._guard("UID SEARCH X-GM-MSGID"):
            found = self._cmd("UID SEARCH").search(["X-GM-MSGID", message_id[len(PREFIX) :]])
        return sorted(int(u) for u in found)

    # -- labels instead of folders -------------------------------------------------------------

    def _store_labels(self, folder: str, uids: Sequence[int], labels: list[str], add: bool) -> None:
        self._ensure_selected(folder)
        for chunk in _chunks(list(uids)):
            with self._guard(f"UID STORE {'+' if add else '-'}X-GM-LABELS"):
                client = self._cmd("UID STORE")
                if add:
                    client.add_gmail_labels(chunk, labels, silent=True)
                else:
                    client.remove_gmail_labels(chunk, labels, silent=True)

    def copy(self, folder: str, uids: Sequence[int], destination: str) -> None:
        if uids:
            self._store_labels(folder, uids, [self._label(destination)], add=True)

    def move(self, folder: str, uids: Sequence[int], destination: str) -> None:
        if not uids:
            return
        self._store_labels(folder, uids, [self._label(destination)], add=True)
        if self.settings.gmail_move == "archive":
            self._store_labels(folder, uids, [self._label(folder)], add=False)

    def delete(self, folder: str, uids: Sequence[int]) -> None:
        """Take the messages out of ``folder`` by removing its label (never EXPUNGE)."""
        if uids:
            self._store_labels(folder, uids, [self._label(folder)], add=False)

    def labels(self, folder: str, uids: Sequence[int]) -> dict[int, set[str]]:
        """The Gmail labels of each message (for `check-config` and the tests)."""
        self._ensure_selected(folder)
        with self._guard("UID FETCH X-GM-LABELS"):
            data: dict[int, Any] = self._cmd("UID FETCH").get_gmail_labels(list(uids))
        return {int(uid): {str(label) for label in labels} for uid, labels in data.items()}
