"""The interface every mailbox backend implements (IMAP, Gmail, Maildir).

Folder names are given as in the rules file, with ``/`` as the hierarchy separator; each
backend maps them to its own separator. UIDs are per folder and only meaningful together
with the folder's UIDVALIDITY.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from daemon.errors import MailboxError


class ServerAnswerError(MailboxError):
    """The server answered a command with something that cannot be interpreted (an item
    missing, NIL or not a number, an answer about another folder or message). The message
    names the command and quotes the server's words; nothing was done with the answer."""


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int  # 0 when the server did not say (SELECT without a usable UIDNEXT)
    exists: int
    highestmodseq: int | None = None


@dataclass(frozen=True)
class FetchedMessage:
    uid: int
    raw: bytes  # at most the backend's fetch cap
    size: int  # the full size on the server
    flags: tuple[str, ...] = ()
    internal_date: str | None = None
    #: A server-assigned identity that survives moves (Gmail's X-GM-MSGID); when set it
    #: replaces the Message-ID header as the message's identity in the state store.
    identity: str | None = None
    #: Why the server's answer for this message cannot be trusted (no UID, two different
    #: answers, the body missing or cut inside the header): it is neither decided nor acted
    #: on, and the next cycle fetches it again. ``raw`` is empty then.
    problem: str | None = None

    @property
    def truncated(self) -> bool:
        return len(self.raw) < self.size


@dataclass(frozen=True)
class Identity:
    message_id: str | None
    internal_date: datetime | None  # timezone-aware


@dataclass(frozen=True)
class Capabilities:
    move: bool
    uidplus: bool
    condstore: bool
    keywords: bool  # can store arbitrary keywords
    names: frozenset[str] = field(default_factory=frozenset)
    #: Extensions the server advertises but answered BAD or nonsense to, with its words:
    #: no longer used on this account (``move``/``uidplus``/``condstore`` are then False).
    broken: Mapping[str, str] = field(default_factory=dict)
    #: Where the user's folders live on the server ("INBOX." on Cyrus's standard
    #: namespace and Courier; "" where the rules' names are the server's).
    folder_prefix: str = ""


class Mailbox(ABC):
    """One account's message store. Not thread-safe: one cycle at a time uses it."""

    account: str
    #: Dry runs select folders read-only (IMAP EXAMINE): not even \Recent changes.
    read_only: bool = False

    @abstractmethod
    def open(self) -> None:
        """Connect and authenticate (a no-op when already open and alive)."""

    @abstractmethod
    def close(self) -> None: ...

    def abort(self) -> None:
        """Break the connection from another thread, so a blocked command fails at once.
        Local stores never block on a peer, so the default does nothing."""
        return

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    def probe(self, folder: str) -> None:
        """Try the advertised extensions the backend uses, harmlessly, on ``folder``, so
        that one the server gets wrong shows in :attr:`capabilities` (``broken``). Local
        stores have none."""
        return

    @abstractmethod
    def list_folders(self) -> list[str]: ...

    @abstractmethod
    def folder_exists(self, folder: str) -> bool: ...

    @abstractmethod
    def ensure_folder(self, folder: str) -> None: ...

    @abstractmethod
    def select(self, folder: str) -> FolderStatus:
        """Select ``folder`` read-write and return its status."""

    @abstractmethod
    def status(self, folder: str) -> FolderStatus:
        """Status of ``folder`` without selecting it."""

    @abstractmethod
    def uids_above(self, folder: str, uid: int) -> list[int]:
        """UIDs greater than ``uid`` in ``folder``, ascending."""

    @abstractmethod
    def uids_since(self, folder: str, since: str | None) -> list[int]:
        """UIDs of messages delivered on/after the date ``since`` (YYYY-MM-DD), or all."""

    @abstractmethod
    def existing(self, folder: str, uids: Sequence[int]) -> set[int]:
        """Which of ``uids`` are still in ``folder`` (another client may have moved or
        deleted some since they were fetched)."""

    @abstractmethod
    def fetch(self, folder: str, uids: Sequence[int], max_bytes: int) -> list[FetchedMessage]:
        """Messages (at most ``max_bytes`` each), never marking them read. Vanished UIDs
        are simply absent from the result."""

    @abstractmethod
    def message_ids(self, folder: str, uids: Sequence[int]) -> dict[int, str | None]:
        """Message-ID header of each existing UID."""

    @abstractmethod
    def identify(self, folder: str, uids: Sequence[int]) -> dict[int, Identity]:
        """Message-ID and delivery time of each existing UID (cheap: headers only)."""

    @abstractmethod
    def message_ids_from(self, folder: str, uid: int) -> dict[int, str | None]:
        """Message-ID of every message with a UID >= ``uid``."""

    @abstractmethod
    def find_message_id(self, folder: str, message_id: str) -> list[int]:
        """UIDs in ``folder`` whose Message-ID header equals ``message_id``."""

    def changed_flags(self, folder: str, since_modseq: int) -> dict[int, tuple[str, ...]]:
        """Flags of every message in ``folder`` changed after ``since_modseq`` (CONDSTORE).
        Stores without modification sequences report nothing."""
        return {}

    @abstractmethod
    def add_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        """Add flags/keywords (``\\Flagged``, ``\\Seen``, ``$intent_x``)."""

    @abstractmethod
    def remove_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None: ...

    @abstractmethod
    def copy(self, folder: str, uids: Sequence[int], destination: str) -> None: ...

    @abstractmethod
    def move(self, folder: str, uids: Sequence[int], destination: str) -> None:
        """Move messages; never removes any other message from ``folder``."""

    def tag_and_move(
        self, folder: str, flags_by_uid: Mapping[int, Sequence[str]], destination: str
    ) -> None:
        """Add each message's flags, then move them all to ``destination``.

        The default stores the flags in ``folder`` (grouped by flag) and moves; a backend
        that can write flags as part of the move (Maildir) overrides it.
        """
        by_flags: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for uid, flags in flags_by_uid.items():
            if flags:
                by_flags[tuple(sorted(set(flags)))].append(uid)
        for flags, uids in by_flags.items():  # one STORE per distinct set of flags
            self.add_flags(folder, uids, list(flags))
        self.move(folder, list(flags_by_uid), destination)

    @abstractmethod
    def delete(self, folder: str, uids: Sequence[int]) -> None:
        """Remove exactly these UIDs (STORE \\Deleted + UID EXPUNGE; never plain EXPUNGE)."""

    @abstractmethod
    def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> None: ...
