"""Pre-flight checks the operator runs before starting the daemon (``cleaninbox
check-config --connect``): every account logs in and has the folders it watches, and the
extensions its server advertises are tried (harmlessly), so one it advertises but answers
BAD to shows as not usable (``Capabilities.broken``), as the daemon will treat it.

The checks are the service's own mailbox path (with the fault-injection hooks the
reliability tests use), so a check that passes means the daemon's logins will too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from daemon.config.settings import Account
from daemon.errors import CleanInboxError
from daemon.mailbox import Mailbox
from daemon.mailbox.base import Capabilities
from daemon.service.faults import open_mailbox_with_hooks


@dataclass(frozen=True)
class LoginCheck:
    """One account's result: the server's capabilities, or why it cannot be used."""

    account: str
    capabilities: Capabilities | None = None
    error: str | None = None


def check_logins(
    accounts: Iterable[Account],
    open_mailbox: Callable[[Account], Mailbox] = open_mailbox_with_hooks,
) -> Iterator[LoginCheck]:
    """Log in to each account and look for its folders, yielding each result as soon as it
    is known (so a slow server shows which account it is stuck on). A refused login or a
    missing folder is a result, not an exception, so every account gets tried."""
    for account in accounts:
        mailbox = open_mailbox(account)
        try:
            mailbox.open()
            missing = [f for f in account.folders if not mailbox.folder_exists(f)]
            if missing:
                raise CleanInboxError(
                    f"account {account.name}: folder(s) not found: {', '.join(missing)}"
                )
            if account.folders:
                mailbox.probe(account.folders[0])
            result = LoginCheck(account.name, capabilities=mailbox.capabilities)
        except CleanInboxError as exc:
            result = LoginCheck(account.name, error=str(exc))
        finally:
            mailbox.close()
        yield result
