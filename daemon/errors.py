"""Typed errors shared by the daemon and training.

The CLI maps every :class:`CleanInboxError` to one clear line on stderr and the
error's ``exit_code``: 2 for bad input (configuration, rules, data, bundle), 1 for
failures at run time.
"""

from __future__ import annotations


class CleanInboxError(Exception):
    """Base class of every error CleanInbox reports to its user."""

    exit_code = 1


class ConfigError(CleanInboxError):
    """Settings, rules or command-line input are wrong."""

    exit_code = 2


class DataError(ConfigError):
    """A dataset is missing or malformed."""


class ModelError(CleanInboxError):
    """A model could not be loaded or run."""


class BundleError(ModelError):
    """A model bundle is missing, corrupt or of an unknown schema."""

    exit_code = 2


class ParityError(ModelError):
    """The exported ONNX model disagrees with the PyTorch model beyond the allowed budget."""


class MailboxError(CleanInboxError):
    """A mailbox server or store failed or refused an operation."""


class ConnectionLostError(MailboxError):
    """The connection to a mailbox server broke; the operation may or may not have happened."""


class AuthError(MailboxError):
    """The server or the OAuth2 provider refused this account's credentials."""


class ReauthorizeError(AuthError):
    """The OAuth2 refresh token is dead (invalid_grant): a person must run
    ``cleaninbox auth ACCOUNT``."""


class StateError(CleanInboxError):
    """The state database is unusable (locked, read-only, corrupt, full)."""


class LeaseLostError(StateError):
    """This replica no longer holds the account's lease (expired while it was frozen or cut
    off, or taken over): it must send no further command and write nothing for it. The
    account's pending decisions are settled by the replica that holds it now."""

    def __init__(self, account: str, detail: str = "") -> None:
        super().__init__(
            f"account {account}: this replica no longer holds its lease"
            + (f" ({detail})" if detail else "")
        )
        self.account = account


class DependencyError(CleanInboxError):
    """An optional dependency (an install extra) is missing."""
