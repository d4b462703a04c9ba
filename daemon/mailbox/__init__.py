"""Mailbox backends behind one interface (:class:`~daemon.mailbox.base.Mailbox`)."""

from __future__ import annotations

from collections.abc import Callable

from daemon.config.settings import Account
from daemon.mailbox.base import Capabilities, FetchedMessage, FolderStatus, Mailbox


def open_mailbox(account: Account, *, on_command: Callable[[str], None] | None = None) -> Mailbox:
    """The backend for ``account.kind`` (not yet connected: call ``open()``).

    ``on_command`` is called before every IMAP command is sent (the crash tests' hook).
    """
    if account.kind == "maildir":
        from daemon.mailbox.maildir import MaildirMailbox

        return MaildirMailbox(account)
    if account.kind == "gmail":
        from daemon.mailbox.gmail import GmailMailbox

        return GmailMailbox(account, on_command=on_command)
    from daemon.mailbox.imap import ImapMailbox

    return ImapMailbox(account, on_command=on_command)


__all__ = ["Capabilities", "FetchedMessage", "FolderStatus", "Mailbox", "open_mailbox"]
