"""Test-only fault injection for the crash tests (tests/reliability). Inert unless set.

``CLEANINBOX_TEST_KILL_AT_WRITE=N``: SIGKILL just before the N-th state write commits.
``CLEANINBOX_TEST_KILL_AT_COMMAND=N``: SIGKILL just before the N-th IMAP command is sent.

Never set these in production: they exist so that a real process can be killed at every
point of a cycle and the next run checked for exactly-once results.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from daemon.config.settings import Account
from daemon.mailbox import Mailbox, open_mailbox
from daemon.store import state

KILL_AT_WRITE = "CLEANINBOX_TEST_KILL_AT_WRITE"
KILL_AT_COMMAND = "CLEANINBOX_TEST_KILL_AT_COMMAND"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _limit(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def install_write_hook() -> None:
    limit = _limit(KILL_AT_WRITE)
    if limit is None:
        return

    def hook(write: int) -> None:
        if write >= limit:
            _die()

    state.set_write_hook(hook)


def command_hook() -> Callable[[str], None] | None:
    """A per-process IMAP command counter that kills at the configured command, or None."""
    limit = _limit(KILL_AT_COMMAND)
    if limit is None:
        return None
    count = 0

    def hook(_command: str) -> None:
        nonlocal count
        count += 1
        if count >= limit:
            _die()

    return hook


def command_hooks(*others: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """The fault hook (when configured) followed by ``others`` (a lease guard), as one
    ``on_command`` hook; None when there is none."""
    present = [hook for hook in (command_hook(), *others) if hook is not None]
    if not present:
        return None

    def run(command: str) -> None:
        for hook in present:
            hook(command)

    return run


def open_mailbox_with_hooks(account: Account) -> Mailbox:
    """:func:`daemon.mailbox.open_mailbox` with the command hook, when one is configured."""
    return open_mailbox(account, on_command=command_hook())
