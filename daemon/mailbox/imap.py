"""IMAP backend (imapclient): UID commands only, BODY.PEEK, partial fetches, MOVE or
COPY + STORE \\Deleted + UID EXPUNGE where MOVE is missing, CONDSTORE when offered.

Plain EXPUNGE is never sent: it would also remove messages another client marked
\\Deleted.
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import date, datetime
from typing import Any, TypeVar

import structlog
from imapclient import IMAPClient
from imapclient import exceptions as imap_exc

from daemon.config.settings import Account
from daemon.errors import AuthError, ConfigError, ConnectionLostError, MailboxError
from daemon.mailbox.base import Capabilities, FetchedMessage, FolderStatus, Identity, Mailbox
from daemon.mailbox.imap_login import connect, describe_error, server_text, temporary
from daemon.mailbox.oauth import TokenSource, token_source

log = structlog.get_logger(__name__)
T = TypeVar("T")
CHUNK = 500  # UIDs per command


def _chunks(uids: Sequence[int], size: int = CHUNK) -> Iterator[list[int]]:
    for start in range(0, len(uids), size):
        yield list(uids[start : start + size])


class ImapMailbox(Mailbox):
    def __init__(
        self,
        account: Account,
        *,
        on_command: Callable[[str], None] | None = None,
        tokens: TokenSource | None = None,
    ):
        if account.host is None or account.port is None:
            raise ConfigError(f"account {account.name}: host is required for IMAP")
        self.account = account.name
        self.settings = account
        if account.oauth2 is not None and tokens is None:
            tokens = token_source(account)
        self.tokens = tokens
        self._client: IMAPClient | None = None
        self._caps: Capabilities | None = None
        self._delimiter = "/"
        self._selected: str | None = None
        self._selected_read_only = False
        self._known_folders: set[str] = set()  # folders seen to exist on this connection
        self._on_command = on_command
        self._permanent_keywords = True

    # -- connection ------------------------------------------------------------------------

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn library/socket errors into MailboxError and drop a broken connection."""
        try:
            yield
        except MailboxError:
            raise
        except imap_exc.IMAPClientError as exc:
            if isinstance(exc, imap_exc.LoginError) and not temporary(server_text(exc)):
                self._drop()
                raise AuthError(
                    f"account {self.account}: {what}: {describe_error(self.settings, exc)}"
                ) from exc
            if isinstance(exc, imap_exc.IMAPClientAbortError):
                self._drop()
                raise ConnectionLostError(
                    f"account {self.account}: {what}: {describe_error(self.settings, exc)}"
                ) from exc
            raise MailboxError(
                f"account {self.account}: {what}: {describe_error(self.settings, exc)}"
            ) from exc
        except (OSError, EOFError, ssl.SSLError) as exc:
            self._drop()
            raise ConnectionLostError(
                f"account {self.account}: {what}: {describe_error(self.settings, exc)}"
            ) from exc

    def _drop(self) -> None:
        client, self._client = self._client, None
        self._selected = None
        self._known_folders.clear()
        if client is not None:
            with suppress(Exception):
                client.shutdown()

    def _cmd(self, name: str) -> IMAPClient:
        if self._client is None:
            raise MailboxError(f"account {self.account}: not connected")
        if self._on_command is not None:
            self._on_command(name)
        return self._client

    def open(self) -> None:
        if self._client is not None:
            try:
                # A connection idle since the last cycle may have died silently (NAT):
                # do not wait a whole socket timeout to find out.
                sock = self._client.socket()
                sock.settimeout(min(self.settings.timeout, self.settings.liveness_timeout / 2))
                self._client.noop()
                sock.settimeout(self.settings.timeout)
                return
            except Exception:
                self._drop()
        with self._guard("connect"):
            session = connect(self.settings, self.tokens)
        self._client = session.client
        self._delimiter = session.delimiter
        self._selected = None
        caps = session.capabilities
        self._caps = Capabilities(
            move="MOVE" in caps,
            uidplus="UIDPLUS" in caps,
            condstore="CONDSTORE" in caps,
            keywords=True,
            names=frozenset(caps),
        )
        log.debug("imap_connected", account=self.account, capabilities=sorted(caps))
        if "X-GM-EXT-1" in caps and self.settings.kind == "imap" and not self.read_only:
            log.info(
                "gmail_detected",
                account=self.account,
                hint="kind: gmail files mail with labels and never expunges",
            )

    def abort(self) -> None:
        client = self._client
        if client is not None:
            with suppress(Exception):
                client.socket().shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        client, self._client = self._client, None
        self._selected = None
        self._known_folders.clear()
        if client is not None:
            try:
                if self._on_command is not None:
                    self._on_command("LOGOUT")  # a lease guard may refuse even this
                client.logout()
            except Exception:
                with suppress(Exception):
                    client.shutdown()

    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            raise MailboxError(f"account {self.account}: not connected")
        return self._caps

    # -- folders ---------------------------------------------------------------------------

    def _name(self, folder: str) -> str:
        """Rules use '/', the server may use another hierarchy delimiter."""
        if folder.upper() == "INBOX" or self._delimiter == "/":
            return folder
        return folder.replace("/", self._delimiter)

    def list_folders(self) -> list[str]:
        with self._guard("LIST"):
            rows = self._cmd("LIST").list_folders()
        return [
            str(name).replace(self._delimiter, "/") if self._delimiter != "/" else str(name)
            for _flags, _delim, name in rows
        ]

    def folder_exists(self, folder: str) -> bool:
        with self._guard(f"LIST {folder}"):
            return bool(self._cmd("LIST").folder_exists(self._name(folder)))

    def ensure_folder(self, folder: str) -> None:
        if folder in self._known_folders:
            return
        if self.folder_exists(folder):
            self._known_folders.add(folder)
            return
        with self._guard(f"CREATE {folder}"):
            try:
                self._cmd("CREATE").create_folder(self._name(folder))
            except imap_exc.IMAPClientAbortError:
                raise
            except imap_exc.IMAPClientError:
                if not self._cmd("LIST").folder_exists(self._name(folder)):
                    raise
            with suppress(imap_exc.IMAPClientError):
                self._cmd("SUBSCRIBE").subscribe_folder(self._name(folder))
        self._known_folders.add(folder)
        log.info("folder_created", account=self.account, folder=folder)

    def select(self, folder: str) -> FolderStatus:
        with self._guard(f"SELECT {folder}"):
            try:
                info = self._cmd("SELECT").select_folder(
                    self._name(folder), readonly=self.read_only
                )
            except imap_exc.IMAPClientAbortError:
                raise  # the connection broke: _guard makes it a retryable ConnectionLostError
            except imap_exc.IMAPClientError as exc:
                raise MailboxError(
                    f"account {self.account}: cannot select folder {folder!r}: {exc}"
                ) from exc
        self._selected = folder
        self._selected_read_only = self.read_only
        flags = info.get(b"PERMANENTFLAGS", ())
        self._permanent_keywords = any(f in (b"\\*", "\\*") for f in flags) if flags else True
        return FolderStatus(
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=int(info.get(b"UIDNEXT", 0)),
            exists=int(info.get(b"EXISTS", 0)),
            highestmodseq=int(info[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in info else None,
        )

    def status(self, folder: str) -> FolderStatus:
        items = ["UIDVALIDITY", "UIDNEXT", "MESSAGES"]
        if self.capabilities.condstore:
            items.append("HIGHESTMODSEQ")
        with self._guard(f"STATUS {folder}"):
            info = self._cmd("STATUS").folder_status(self._name(folder), items)
        return FolderStatus(
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=int(info[b"UIDNEXT"]),
            exists=int(info[b"MESSAGES"]),
            highestmodseq=int(info[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in info else None,
        )

    def changed_flags(self, folder: str, since_modseq: int) -> dict[int, tuple[str, ...]]:
        if not self.capabilities.condstore:
            return {}
        self._ensure_selected(folder)
        with self._guard("UID SEARCH MODSEQ"):
            changed = self._cmd("UID SEARCH").search(["MODSEQ", str(int(since_modseq) + 1)])
        if not changed:
            return {}
        data: dict[int, Any] = {}
        for chunk in _chunks(sorted(int(u) for u in changed)):
            with self._guard("UID FETCH FLAGS"):
                data.update(self._cmd("UID FETCH").fetch(chunk, ["FLAGS"]))
        return {
            int(uid): tuple(
                f.decode() if isinstance(f, bytes) else str(f) for f in item.get(b"FLAGS", ())
            )
            for uid, item in data.items()
        }

    def _ensure_selected(self, folder: str) -> IMAPClient:
        if self._selected != folder or self._selected_read_only != self.read_only:
            self.select(folder)
        assert self._client is not None
        return self._client

    # -- messages --------------------------------------------------------------------------

    def uids_above(self, folder: str, uid: int) -> list[int]:
        self._ensure_selected(folder)
        with self._guard("UID SEARCH"):
            found = self._cmd("UID SEARCH").search(["UID", f"{uid + 1}:*"])
        return sorted(int(u) for u in found if int(u) > uid)

    def uids_since(self, folder: str, since: str | None) -> list[int]:
        self._ensure_selected(folder)
        criteria: list[Any] = ["ALL"] if since is None else ["SINCE", date.fromisoformat(since)]
        with self._guard("UID SEARCH"):
            return sorted(int(u) for u in self._cmd("UID SEARCH").search(criteria))

    def existing(self, folder: str, uids: Sequence[int]) -> set[int]:
        self._ensure_selected(folder)
        found: set[int] = set()
        for chunk in _chunks(sorted(uids)):
            with self._guard("UID SEARCH"):
                found.update(
                    int(u)
                    for u in self._cmd("UID SEARCH").search(
                        ["UID", ",".join(str(u) for u in chunk)]
                    )
                )
        return found & set(uids)

    # How a message is identified across folders: its Message-ID header here; Gmail
    # overrides these with its server-assigned X-GM-MSGID.
    IDENTITY_ITEMS: tuple[str, ...] = ("BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]",)
    SERVER_IDENTITY = False  # fetch() asks for the identity too (Message-ID is in the body)

    def _identity_of(self, item: dict[bytes, Any]) -> str | None:
        raw = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), b"")
        value = email.message_from_bytes(raw or b"", policy=email.policy.compat32).get("Message-ID")
        return " ".join(str(value).split()) if value else None

    def _reserve(self, planned: int) -> None:
        """Called before fetching up to ``planned`` bytes (Gmail's daily budget)."""

    def _release(self, unused: int) -> None:
        """Called with the part of a reservation a fetch did not use."""

    def fetch(self, folder: str, uids: Sequence[int], max_bytes: int) -> list[FetchedMessage]:
        self._ensure_selected(folder)
        out: list[FetchedMessage] = []
        items = [f"BODY.PEEK[]<0.{max_bytes}>", "RFC822.SIZE", "FLAGS", "INTERNALDATE"]
        if self.SERVER_IDENTITY:
            items += self.IDENTITY_ITEMS
        for chunk in _chunks(uids):
            planned = len(chunk) * max_bytes
            self._reserve(planned)
            with self._guard("UID FETCH"):
                data = self._cmd("UID FETCH").fetch(chunk, items)
            used = 0
            for uid in chunk:
                item = data.get(uid)
                if item is None:
                    continue  # expunged meanwhile
                raw = bytes(item.get(b"BODY[]<0>") or item.get(b"BODY[]") or b"")
                used += len(raw)
                when = item.get(b"INTERNALDATE")
                out.append(
                    FetchedMessage(
                        uid=uid,
                        raw=raw,
                        size=int(item.get(b"RFC822.SIZE", len(raw))),
                        flags=tuple(
                            f.decode() if isinstance(f, bytes) else str(f)
                            for f in item.get(b"FLAGS", ())
                        ),
                        internal_date=when.isoformat() if isinstance(when, datetime) else None,
                        identity=self._identity_of(item) if self.SERVER_IDENTITY else None,
                    )
                )
            self._release(planned - used)
        return out

    def message_ids(self, folder: str, uids: Sequence[int]) -> dict[int, str | None]:
        return {uid: i.message_id for uid, i in self._identities(folder, uids, []).items()}

    def identify(self, folder: str, uids: Sequence[int]) -> dict[int, Identity]:
        return self._identities(folder, uids, ["INTERNALDATE"])

    def _identities(
        self, folder: str, uids: Sequence[int], extra: list[str]
    ) -> dict[int, Identity]:
        self._ensure_selected(folder)
        out: dict[int, Identity] = {}
        for chunk in _chunks(uids):
            with self._guard("UID FETCH"):
                data = self._cmd("UID FETCH").fetch(chunk, [*self.IDENTITY_ITEMS, *extra])
            for uid, item in data.items():
                when = item.get(b"INTERNALDATE")
                if isinstance(when, datetime) and when.tzinfo is None:
                    when = when.astimezone()  # imapclient gives local naive times by default
                out[int(uid)] = Identity(
                    self._identity_of(item), when if isinstance(when, datetime) else None
                )
        return out

    def message_ids_from(self, folder: str, uid: int) -> dict[int, str | None]:
        return self.message_ids(folder, self.uids_above(folder, max(0, uid - 1)))

    def find_message_id(self, folder: str, message_id: str) -> list[int]:
        self._ensure_selected(folder)
        with self._guard("UID SEARCH"):
            candidates = self._cmd("UID SEARCH").search(["HEADER", "Message-ID", message_id])
        if not candidates:
            return []
        exact = self.message_ids(folder, sorted(int(u) for u in candidates))
        return sorted(uid for uid, mid in exact.items() if mid == message_id)

    def add_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        if not uids or not flags:
            return
        self._ensure_selected(folder)
        if not self._permanent_keywords and any(not f.startswith("\\") for f in flags):
            raise MailboxError(
                f"account {self.account}: folder {folder!r} does not accept new keywords "
                "(PERMANENTFLAGS lacks \\*)"
            )
        for chunk in _chunks(uids):
            with self._guard("UID STORE"):
                self._cmd("UID STORE").add_flags(chunk, list(flags), silent=True)

    def remove_flags(self, folder: str, uids: Sequence[int], flags: Sequence[str]) -> None:
        if not uids or not flags:
            return
        self._ensure_selected(folder)
        for chunk in _chunks(uids):
            with self._guard("UID STORE"):
                self._cmd("UID STORE").remove_flags(chunk, list(flags), silent=True)

    def copy(self, folder: str, uids: Sequence[int], destination: str) -> None:
        if not uids:
            return
        self._ensure_selected(folder)
        for chunk in _chunks(uids):
            with self._guard(f"UID COPY to {destination}"):
                self._cmd("UID COPY").copy(chunk, self._name(destination))

    def move(self, folder: str, uids: Sequence[int], destination: str) -> None:
        if not uids:
            return
        self._ensure_selected(folder)
        if self.capabilities.move:
            for chunk in _chunks(uids):
                with self._guard(f"UID MOVE to {destination}"):
                    self._cmd("UID MOVE").move(chunk, self._name(destination))
            return
        self.copy(folder, uids, destination)
        self.delete(folder, uids)

    def delete(self, folder: str, uids: Sequence[int]) -> None:
        if not uids:
            return
        self._ensure_selected(folder)
        self.add_flags(folder, uids, ["\\Deleted"])
        if not self.capabilities.uidplus:
            log.warning(
                "expunge_left_to_client",
                account=self.account,
                folder=folder,
                uids=list(uids),
                reason="server lacks UIDPLUS; plain EXPUNGE could remove other clients' "
                "messages, so the source copies stay marked \\Deleted",
            )
            return
        for chunk in _chunks(uids):
            with self._guard("UID EXPUNGE"):
                self._cmd("UID EXPUNGE").uid_expunge(chunk)

    # -- IDLE (used on a watcher's own connection, never the triage one) -----------------

    def idle_start(self, folder: str) -> None:
        """EXAMINE ``folder`` (read-only: watching never changes \\Recent) and enter IDLE."""
        if "IDLE" not in self.capabilities.names:
            raise MailboxError(
                f"account {self.account}: {self.settings.host} does not offer IDLE; use mode: poll"
            )
        self.read_only = True
        self._ensure_selected(folder)
        with self._guard(f"IDLE {folder}"):
            self._cmd("IDLE").idle()

    def idle_wait(self, timeout: float) -> list[tuple[Any, ...]]:
        """Untagged responses the server sent within ``timeout`` seconds (maybe none)."""
        with self._guard("IDLE"):
            client = self._cmd("IDLE wait")
            return list(client.idle_check(timeout=timeout))

    def idle_done(self, timeout: float) -> list[tuple[Any, ...]]:
        """End IDLE; the server must confirm within ``timeout`` seconds or the link is
        considered dead (ConnectionLostError)."""
        with self._guard("DONE"):
            client = self._cmd("DONE")
            sock = client.socket()
            previous = sock.gettimeout()
            sock.settimeout(timeout)
            try:
                _text, responses = client.idle_done()
            finally:
                with suppress(OSError):
                    sock.settimeout(previous)
            return list(responses)

    def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> None:
        with self._guard(f"APPEND to {folder}"):
            self._cmd("APPEND").append(self._name(folder), raw, flags=list(flags))
