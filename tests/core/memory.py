"""An in-memory IMAP server and a :class:`~daemon.mailbox.base.Mailbox` connected to it.

Why: the triage core's exactly-once logic (write-ahead journal, act, reconcile) must be
tested at every crash point, and doing that against Dovecot with SIGKILLed processes takes
minutes. Here the server is a plain Python object, so a "crash" is an exception and a
"restart" is a new :class:`MemoryMailbox` on the same :class:`MemoryServer`.

Semantics follow :class:`daemon.mailbox.imap.ImapMailbox` (the reference backend): one
counted command per IMAP command it would send (implicit SELECT included), MOVE only when
the server offers it, otherwise COPY + STORE \\Deleted + UID EXPUNGE (UID EXPUNGE only with
UIDPLUS), UIDs per folder that are never reused, a new UIDVALIDITY for a recreated
folder, TRYCREATE-style refusals for missing folders, and writes refused in a folder
selected read-only (EXAMINE). :class:`Faults` injects errors and crashes by command.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal, TypeVar

from daemon.errors import ConnectionLostError, MailboxError
from daemon.mailbox.base import Capabilities, FetchedMessage, FolderStatus, Identity, Mailbox

T = TypeVar("T")
Moment = Literal["before", "after"]


class Crash(BaseException):
    """The process died here. A BaseException, so no ``except Exception`` in the daemon
    can swallow it, exactly as nothing survives a SIGKILL."""


def header_message_id(raw: bytes) -> str | None:
    """The Message-ID header as the IMAP backend reads it (whitespace folded)."""
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0] + b"\n\n"
    value = email.message_from_bytes(head, policy=email.policy.compat32).get("Message-ID")
    return " ".join(str(value).split()) if value else None


@dataclass
class StoredMessage:
    uid: int
    raw: bytes
    flags: set[str]
    internal_date: datetime
    modseq: int

    @property
    def message_id(self) -> str | None:
        return header_message_id(self.raw)


@dataclass
class Folder:
    uidvalidity: int
    uidnext: int = 1
    modseq: int = 1
    messages: dict[int, StoredMessage] = field(default_factory=dict)

    def add(self, raw: bytes, flags: Iterable[str], when: datetime) -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.modseq += 1
        self.messages[uid] = StoredMessage(uid, raw, set(flags) - {"\\Recent"}, when, self.modseq)
        return uid

    def touch(self, message: StoredMessage) -> None:
        self.modseq += 1
        message.modseq = self.modseq


class MemoryServer:
    """The mailbox's server side: folders and messages that outlive every connection.

    The methods without a leading underscore other than :meth:`connect` are what *another
    client* (the user, a mail delivery) does: they bypass fault injection and command
    counting.
    """

    def __init__(self, *, move: bool = True, uidplus: bool = True, condstore: bool = False) -> None:
        self.move_capability = move
        self.uidplus = uidplus
        self.condstore = condstore
        self._uidvalidity = 1000
        self.folders: dict[str, Folder] = {}
        self.create("INBOX")

    # -- another client -------------------------------------------------------------------

    def create(self, name: str) -> None:
        if name not in self.folders:
            self._uidvalidity += 1
            self.folders[name] = Folder(self._uidvalidity)

    def remove(self, name: str) -> None:
        del self.folders[name]

    def deliver(
        self,
        raw: bytes,
        folder: str = "INBOX",
        flags: Iterable[str] = (),
        when: datetime | None = None,
    ) -> int:
        return self.folders[folder].add(raw, flags, when or datetime.now(UTC))

    def renumber(self, name: str) -> None:
        """A new UIDVALIDITY and fresh UIDs for every message (``doveadm mailbox update
        --uid-validity``, or a server rebuilding its index)."""
        old = self.folders[name]
        self._uidvalidity += 1
        fresh = Folder(self._uidvalidity)
        for message in old.messages.values():
            fresh.add(message.raw, message.flags, message.internal_date)
        self.folders[name] = fresh

    def user_move(self, message_id: str, source: str, destination: str) -> None:
        """The user drags a message into another folder (created when missing)."""
        self.create(destination)
        (uid,) = self.find(source, message_id)
        message = self.folders[source].messages.pop(uid)
        self.folders[destination].add(message.raw, message.flags, message.internal_date)

    def user_flags(
        self, folder: str, message_id: str, add: Sequence[str] = (), drop: Sequence[str] = ()
    ) -> None:
        """The user changes a message's flags or keywords (its MODSEQ moves)."""
        for uid in self.find(folder, message_id):
            message = self.folders[folder].messages[uid]
            message.flags |= set(add)
            message.flags -= set(drop)
            self.folders[folder].touch(message)

    def find(self, folder: str, message_id: str) -> list[int]:
        messages = self.folders[folder].messages
        return sorted(uid for uid, m in messages.items() if m.message_id == message_id)

    def locate(self) -> dict[str, list[tuple[str, StoredMessage]]]:
        """Message-ID -> every (folder, message) holding it, across the whole server."""
        out: dict[str, list[tuple[str, StoredMessage]]] = {}
        for name, folder in sorted(self.folders.items()):
            for message in folder.messages.values():
                out.setdefault(message.message_id or "", []).append((name, message))
        return out

    def snapshot(self) -> dict[str, list[tuple[str | None, tuple[str, ...], bytes]]]:
        """Every non-empty folder's messages (Message-ID, flags, bytes): UIDs left out, so
        two servers that reached the same state by different paths compare equal."""
        return {
            name: sorted(
                (m.message_id, tuple(sorted(m.flags)), m.raw) for m in folder.messages.values()
            )
            for name, folder in sorted(self.folders.items())
            if folder.messages
        }

    def connect(self, account: str = "mem", faults: Faults | None = None) -> MemoryMailbox:
        return MemoryMailbox(self, account, faults)


@dataclass(frozen=True)
class Fault:
    """Raise ``error`` at the ``at``-th command (counted among commands named ``command``,
    or among all commands when None), ``before`` it runs or ``after`` it took effect."""

    at: int
    command: str | None = None
    when: Moment = "before"
    error: type[BaseException] = Crash


@dataclass
class Faults:
    """The faults to inject into one connection, and the log of commands it sent."""

    planned: list[Fault] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    fired: list[Fault] = field(default_factory=list)

    def _position(self, fault: Fault) -> int:
        if fault.command is None:
            return len(self.sent)
        return sum(1 for name in self.sent if name == fault.command)

    def check(self, name: str, when: Moment) -> None:
        if when == "before":
            self.sent.append(name)
        for fault in self.planned:
            if fault.when != when or fault.command not in (None, name):
                continue
            if fault.at == self._position(fault) and fault not in self.fired:
                self.fired.append(fault)
                raise fault.error(f"injected {fault.error.__name__} {when} {name} #{fault.at}")


class MemoryMailbox(Mailbox):
    """One connection to a :class:`MemoryServer`, with the IMAP backend's semantics."""

    def __init__(self, server: MemoryServer, account: str, faults: Faults | None) -> None:
        self.server = server
        self.account = account
        self.faults = faults or Faults()
        self.connected = False
        self.opened = 0  # how many times a connection was made (reconnects after a loss)
        self._selected: str | None = None
        self._selected_read_only = False
        self._known_folders: set[str] = set()

    # -- connection ---------------------------------------------------------------------------

    def open(self) -> None:
        if not self.connected:
            self.connected = True
            self.opened += 1
            self._selected = None

    def close(self) -> None:
        self.connected = False
        self._selected = None
        self._known_folders.clear()

    def _command(self, name: str, run: Callable[[], T]) -> T:
        """Send one command: faults before, the effect, faults after (a lost answer)."""
        if not self.connected:
            raise MailboxError(f"account {self.account}: not connected")
        try:
            self.faults.check(name, "before")
            result = run()
            self.faults.check(name, "after")
        except ConnectionLostError:
            self.close()  # like ImapMailbox._drop: the next cycle's open() reconnects
            raise
        return result

    @property
    def capabilities(self) -> Capabilities:
        if not self.connected:
            raise MailboxError(f"account {self.account}: not connected")
        s = self.server
        names = {"IMAP4REV1"} | {
            n for n, on in (("MOVE", s.move_capability), ("UIDPLUS", s.uidplus)) if on
        }
        if s.condstore:
            names.add("CONDSTORE")
        return Capabilities(
            move=s.move_capability,
            uidplus=s.uidplus,
            condstore=s.condstore,
            keywords=True,
            names=frozenset(names),
        )

    # -- folders ------------------------------------------------------------------------------

    def _folder(self, name: str) -> Folder:
        folder = self.server.folders.get(name)
        if folder is None:
            raise MailboxError(f"account {self.account}: [TRYCREATE] no folder {name!r}")
        return folder

    def list_folders(self) -> list[str]:
        return self._command("LIST", lambda: sorted(self.server.folders))

    def folder_exists(self, folder: str) -> bool:
        return self._command("LIST", lambda: folder in self.server.folders)

    def ensure_folder(self, folder: str) -> None:
        if folder in self._known_folders:
            return
        if not self.folder_exists(folder):
            self._command("CREATE", lambda: self.server.create(folder))
        self._known_folders.add(folder)

    def _status_of(self, folder: Folder) -> FolderStatus:
        return FolderStatus(
            uidvalidity=folder.uidvalidity,
            uidnext=folder.uidnext,
            exists=len(folder.messages),
            highestmodseq=folder.modseq if self.server.condstore else None,
        )

    def select(self, folder: str) -> FolderStatus:
        def run() -> FolderStatus:
            status = self._status_of(self._folder(folder))
            self._selected, self._selected_read_only = folder, self.read_only
            return status

        return self._command("SELECT", run)

    def status(self, folder: str) -> FolderStatus:
        return self._command("STATUS", lambda: self._status_of(self._folder(folder)))

    def _ensure_selected(self, folder: str) -> Folder:
        if self._selected != folder or self._selected_read_only != self.read_only:
            self.select(folder)
        return self._folder(folder)

    def _writable(self, folder: str) -> Folder:
        selected = self._ensure_selected(folder)
        if self._selected_read_only:
            raise MailboxError(f"account {self.account}: {folder!r} is selected read-only")
        return selected

    # -- searching and fetching ---------------------------------------------------------------

    def _search(self, folder: str, match: Callable[[StoredMessage], bool]) -> list[int]:
        selected = self._ensure_selected(folder)
        return self._command(
            "UID SEARCH", lambda: sorted(u for u, m in selected.messages.items() if match(m))
        )

    def uids_above(self, folder: str, uid: int) -> list[int]:
        return self._search(folder, lambda m: m.uid > uid)

    def uids_since(self, folder: str, since: str | None) -> list[int]:
        day = date.fromisoformat(since) if since is not None else date.min
        return self._search(folder, lambda m: m.internal_date.date() >= day)

    def existing(self, folder: str, uids: Sequence[int]) -> set[int]:
        wanted = set(uids)
        return set(self._search(folder, lambda m: m.uid in wanted))

    def find_message_id(self, folder: str, message_id: str) -> list[int]:
        return self._search(folder, lambda m: m.message_id == message_id)

    def _fetch(self, folder: str, uids: Sequence[int]) -> list[StoredMessage]:
        selected = self._ensure_selected(folder)
        return self._command(
            "UID FETCH", lambda: [selected.messages[u] for u in uids if u in selected.messages]
        )

    def fetch(self, folder: str, uids: Sequence[int], max_bytes: int) -> list[FetchedMessage]:
        return [
            FetchedMessage(
                uid=m.uid,
                raw=m.raw[:max_bytes],
                size=len(m.raw),
                flags=tuple(sorted(m.flags)),
                internal_date=m.internal_date.isoformat(),
            )
            for m in self._fetch(folder, uids)
        ]

    def message_ids(self, folder: str, uids: Sequence[int]) -> dict[int, str | None]:
        return {m.uid: m.message_id for m in self._fetch(folder, uids)}

    def identify(self, folder: str, uids: Sequence[int]) -> dict[int, Identity]:
        return {m.uid: Identity(m.message_id, m.internal_date) for m in self._fetch(folder, uids)}

    def message_ids_from(self, folder: str, uid: int) -> dict[int, str | None]:
        return self.message_ids(folder, self.uids_above(folder, max(0, uid - 1)))

    def changed_flags(self, folder: str, since_modseq: int) -> dict[int, tuple[str, ...]]:
        if not self.server.condstore:
            return {}
        changed = self._search(folder, lambda m: m.modseq > since_modseq)
        if not changed:
            return {}
        return {m.uid: tuple(sorted(m.flags)) for m in self._fetch(folder, changed)}

    # -- changing -----------------------------------------------------------------------------

    def _store(self, folder: str, uids: Sequence[int], flags: Sequence[str], add: bool) -> None:
        if not uids or not flags:
            return
        selected = self._writable(folder)

        def run() -> None:
            for uid in uids:
                message = selected.messages.get(uid)
                if message is None:
                    continue
                before = set(message.flags)
                message.flags = before | set(flags) if add else before - set(flags)
                if message.flags != before:
                    selected.touch(message)

        self._command("UID STORE", run)

    def add_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        self._store(folder, uids, flags, add=True)

    def remove_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        self._store(folder, uids, flags, add=False)

    def _transfer(self, source: Folder, uids: Sequence[int], destination: str) -> list[int]:
        """Append copies of ``uids`` (ascending, as servers do) to ``destination``."""
        target = self._folder(destination)
        moved = [u for u in sorted(set(uids)) if u in source.messages]
        for uid in moved:
            message = source.messages[uid]
            target.add(message.raw, message.flags, message.internal_date)
        return moved

    def copy(self, folder: str, uids: Sequence[int], destination: str) -> None:
        if not uids:
            return
        selected = self._ensure_selected(folder)
        self._command("UID COPY", lambda: self._transfer(selected, uids, destination))

    def move(self, folder: str, uids: Sequence[int], destination: str) -> None:
        if not uids:
            return
        selected = self._writable(folder)
        if self.server.move_capability:

            def run() -> None:
                for uid in self._transfer(selected, uids, destination):
                    del selected.messages[uid]

            self._command("UID MOVE", run)
            return
        self.copy(folder, uids, destination)
        self.delete(folder, uids)

    def delete(self, folder: str, uids: Sequence[int]) -> None:
        if not uids:
            return
        selected = self._writable(folder)
        self.add_flags(folder, uids, ["\\Deleted"])
        if not self.server.uidplus:
            return  # plain EXPUNGE could remove other clients' messages: left marked

        def run() -> None:
            for uid in uids:
                message = selected.messages.get(uid)
                if message is not None and "\\Deleted" in message.flags:
                    del selected.messages[uid]

        self._command("UID EXPUNGE", run)

    def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> None:
        self._command("APPEND", lambda: self._folder(folder).add(raw, flags, datetime.now(UTC)))
