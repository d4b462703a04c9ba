"""Mailbox backends behind one interface (:class:`~daemon.mailbox.base.Mailbox`)."""

from __future__ import annotations

from daemon.mailbox.base import Capabilities, FetchedMessage, FolderStatus, Mailbox
from daemon.settings import Account


def open_mailbox(account: Account) -> Mailbox:
    """The backend for ``account.kind`` (not yet connected: call ``open()``)."""
    if account.kind == "maildir":
        from daemon.mailbox.maildir import MaildirMailbox

        return MaildirMailbox(account)
    from daemon.faults import command_hook

    if account.kind == "gmail":
        from daemon.mailbox.gmail import GmailMailbox

        return GmailMailbox(account, on_command=command_hook())
    from daemon.mailbox.imap import ImapMailbox

    return ImapMailbox(account, on_command=command_hook())


__all__ = ["Capabilities", "FetchedMessage", "FolderStatus", "Mailbox", "open_mailbox"]
