"""IMAP backend (imapclient): UID commands only, BODY.PEEK, partial fetches, MOVE or
COPY + STORE \\Deleted + UID EXPUNGE where MOVE is missing, CONDSTORE when offered.

Plain EXPUNGE is never sent: it would also remove messages another client marked
\\Deleted.

Servers deviate from the RFCs (docs/reliability.md, "Hostile servers: the contract"), so
every item of an answer is read through :func:`_number` and the checks around it: an
answer that cannot be used raises :class:`~daemon.mailbox.base.ServerAnswerError` naming
the command and quoting the server, or marks the one message it concerns as
``problem`` (left for the next cycle); an extension the server advertises but answers
BAD (or nonsense) to is no longer used on this account (:meth:`ImapMailbox._disable`).
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import date, datetime
from typing import Any, TypeVar

import structlog
from imapclient import exceptions as imap_exc
from imapclient.datetime_util import parse_to_datetime
from imapclient.imap_utf7 import decode as decode_utf7

from daemon.config.settings import Account
from daemon.errors import AuthError, ConfigError, ConnectionLostError, MailboxError
from daemon.mailbox.base import (
    Capabilities,
    FetchedMessage,
    FolderStatus,
    Identity,
    Mailbox,
    ServerAnswerError,
)
from daemon.mailbox.imap_login import (
    Client,
    Items,
    connect,
    describe_error,
    refused_with_bad,
    server_text,
    temporary,
)
from daemon.mailbox.oauth import TokenSource, token_source

log = structlog.get_logger(__name__)
T = TypeVar("T")
CHUNK = 500  # UIDs per command
#: A UID no message can have (the largest there is): probes of an extension use it, so
#: that trying UID MOVE or UID EXPUNGE changes nothing.
NO_SUCH_UID = 4294967295
#: Errors imapclient raises (outside its own exception classes) on an answer it cannot
#: parse: SEARCH with a word among the numbers, an untagged response cut short.
_PARSE_ERRORS = (ValueError, TypeError, IndexError, KeyError)


def _chunks(uids: Sequence[int], size: int = CHUNK) -> Iterator[list[int]]:
    for start in range(0, len(uids), size):
        yield list(uids[start : start + size])


def _number(value: Any) -> int | None:
    """An IMAP number as parsed: an int, or a string of digits (some servers quote
    numbers); None for NIL, a missing item or anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        text = value.strip().strip('"')
        if text.isascii() and text.isdigit():
            return int(text)
    return None


def _flags(value: Any) -> tuple[str, ...]:
    """FLAGS as parsed: a list, one bare flag, or NIL (none known)."""
    if value is None:
        return ()
    values = value if isinstance(value, tuple | list) else (value,)
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _when(value: Any, normalise: bool) -> datetime | None:
    """INTERNALDATE as a datetime; None when NIL or not a date."""
    if isinstance(value, bytes | str):
        try:
            parsed: datetime = parse_to_datetime(
                value.encode() if isinstance(value, str) else value, normalise=normalise
            )
            return parsed
        except ValueError:
            return None
    return value if isinstance(value, datetime) else None


def _header_complete(raw: bytes) -> bool:
    return b"\r\n\r\n" in raw or b"\n\n" in raw


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
        self._client: Client | None = None
        self._caps: Capabilities | None = None
        self._delimiter = "/"
        self._prefix = ""  # the personal namespace's, e.g. "INBOX." (imap_login.Session)
        self._selected: str | None = None
        self._selected_read_only = False
        self._known_folders: set[str] = set()  # folders seen to exist on this connection
        self._on_command = on_command
        self._permanent_keywords = True
        #: Advertised extensions found broken (name -> the command and the server's words);
        #: kept across reconnections, so each is logged once per process.
        self._broken: dict[str, str] = {}
        self._uid_expunge_tried = False

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
            if isinstance(exc, imap_exc.ProtocolError):
                raise self._unusable(what, f"the answer does not parse ({exc})") from exc
            raise MailboxError(
                f"account {self.account}: {what}: {describe_error(self.settings, exc)}"
            ) from exc
        except (OSError, EOFError, ssl.SSLError) as exc:
            # Before the parse errors: ssl.SSLCertVerificationError is also a ValueError.
            self._drop()
            raise ConnectionLostError(
                f"account {self.account}: {what}: {describe_error(self.settings, exc)}"
            ) from exc
        except _PARSE_ERRORS as exc:  # the library choked on the answer
            raise self._unusable(
                what, f"the answer does not parse ({type(exc).__name__}: {exc})"
            ) from exc

    def _drop(self) -> None:
        client, self._client = self._client, None
        self._selected = None
        self._known_folders.clear()
        if client is not None:
            with suppress(Exception):
                client.shutdown()

    def _cmd(self, name: str) -> Client:
        if self._client is None:
            raise MailboxError(f"account {self.account}: not connected")
        if self._on_command is not None:
            self._on_command(name)
        self._client.heard.clear()
        return self._client

    def _said(self, about: str | None = None) -> str:
        """What the server said to the last command (its lines mentioning ``about``)."""
        return self._client.said(about) if self._client is not None else "(disconnected)"

    def _unusable(self, command: str, problem: str, about: str | None = None) -> ServerAnswerError:
        return ServerAnswerError(
            f"account {self.account}: {command}: {problem}; the server said: {self._said(about)}"
        )

    def _disable(self, extension: str, command: str, said: str) -> None:
        """Stop using an extension the server advertises but gets wrong (logged once)."""
        if extension in self._broken:
            return
        self._broken[extension] = f"{command}: {said}"
        log.warning(
            "capability_broken",
            account=self.account,
            capability=extension,
            command=command,
            server_said=said,
            action=f"{extension} is no longer used for this account",
        )
        if self._caps is not None:
            self._caps = self._without_broken(self._caps)

    def _without_broken(self, caps: Capabilities) -> Capabilities:
        broken = self._broken
        return replace(
            caps,
            move=caps.move and "MOVE" not in broken,
            uidplus=caps.uidplus and "UIDPLUS" not in broken,
            condstore=caps.condstore and "CONDSTORE" not in broken,
            broken=dict(broken),
        )

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
        self._prefix = session.prefix
        self._selected = None
        caps = session.capabilities
        self._caps = Capabilities(
            move="MOVE" in caps,
            uidplus="UIDPLUS" in caps,
            condstore="CONDSTORE" in caps,
            keywords=True,
            names=frozenset(caps),
            folder_prefix=session.prefix,
        )
        for extension, said in session.broken.items():  # "COMMAND ...: the server's words"
            command, _, words = said.partition(": ")
            self._disable(extension, command.split(" ", 1)[0], words)
        self._caps = self._without_broken(self._caps)
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
        """The server's name of a folder the rules name: their '/' becomes the server's
        hierarchy delimiter, and the personal namespace's prefix goes in front (unless
        the name has it already), so ``Triage/All`` is ``INBOX.Triage.All`` on Cyrus's
        standard namespace and on Courier."""
        if folder.upper() == "INBOX":
            return folder
        native = folder if self._delimiter == "/" else folder.replace("/", self._delimiter)
        if self._prefix and not native.upper().startswith(self._prefix.upper()):
            native = self._prefix + native
        return native

    def _rules_name(self, name: str) -> str:
        """The inverse of :meth:`_name`: a server's folder name as the rules write it."""
        if self._prefix and name.upper().startswith(self._prefix.upper()):
            name = name[len(self._prefix) :]
        return name if self._delimiter == "/" else name.replace(self._delimiter, "/")

    def list_folders(self) -> list[str]:
        with self._guard("LIST"):
            rows = self._cmd("LIST").list_folders()
        return [self._rules_name(str(name)) for _flags, _delim, name in rows]

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
            except imap_exc.IMAPClientError as exc:
                # [ALREADYEXISTS] (RFC 5530) is the server's word that it is there, even
                # when its LIST did not show it (unsubscribed, or a LIST that lags).
                if "[ALREADYEXISTS]" not in str(exc).upper() and not self._cmd(
                    "LIST"
                ).folder_exists(self._name(folder)):
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
                    f"account {self.account}: SELECT {folder}: cannot select the folder: "
                    f"{describe_error(self.settings, exc)}"
                ) from exc
        status = self._select_status(f"SELECT {folder}", info)
        self._selected = folder
        self._selected_read_only = self.read_only
        return status

    def _select_status(self, command: str, info: Items) -> FolderStatus:
        """The SELECT answer's items (each a list of raw words, several when the server
        repeated one). UIDVALIDITY must be there, once; without a usable UIDNEXT the
        folder's next UID is unknown (0); a HIGHESTMODSEQ without a number breaks
        CONDSTORE."""
        flags = " ".join(info.get(b"PERMANENTFLAGS", []))
        self._permanent_keywords = "\\*" in flags if flags else True

        def last(name: bytes) -> int | None:
            values = [_number(v) for v in info.get(name, [])]
            return values[-1] if values else None

        validity = {_number(v) for v in info.get(b"UIDVALIDITY", [])}
        uidvalidity = validity.pop() if len(validity) == 1 else None
        if not uidvalidity:
            raise self._unusable(command, "no single usable UIDVALIDITY", "UIDVALIDITY")
        modseq = last(b"HIGHESTMODSEQ")
        if modseq is None and info.get(b"HIGHESTMODSEQ") and self.capabilities.condstore:
            self._disable("CONDSTORE", command, self._said("HIGHESTMODSEQ"))
        return FolderStatus(
            uidvalidity=uidvalidity,
            uidnext=last(b"UIDNEXT") or 0,
            exists=last(b"EXISTS") or 0,
            highestmodseq=modseq if self.capabilities.condstore else None,
        )

    def status(self, folder: str) -> FolderStatus:
        condstore = self.capabilities.condstore
        items = ["UIDVALIDITY", "UIDNEXT", "MESSAGES", *(["HIGHESTMODSEQ"] if condstore else [])]
        command = f"STATUS {folder}"
        with self._guard(command):
            try:
                answers = self._cmd("STATUS").statuses(self._name(folder), items)
            except imap_exc.IMAPClientAbortError:
                raise
            except imap_exc.IMAPClientError as exc:
                if not (condstore and refused_with_bad(exc)):
                    raise
                said = server_text(exc)
                answers = self._cmd("STATUS").statuses(self._name(folder), items[:3])
                self._disable("CONDSTORE", f"{command} (HIGHESTMODSEQ)", said)
        info = self._status_of(folder, answers, command)
        modseq = _number(info.get(b"HIGHESTMODSEQ"))
        if modseq is None and self.capabilities.condstore and b"HIGHESTMODSEQ" in info:
            self._disable("CONDSTORE", command, self._said("HIGHESTMODSEQ"))
        uidvalidity, uidnext = _number(info.get(b"UIDVALIDITY")), _number(info.get(b"UIDNEXT"))
        if not uidvalidity or uidnext is None:
            raise self._unusable(command, "no usable UIDVALIDITY and UIDNEXT", "STATUS")
        return FolderStatus(
            uidvalidity=uidvalidity,
            uidnext=uidnext,
            exists=_number(info.get(b"MESSAGES")) or 0,
            highestmodseq=modseq if self.capabilities.condstore else None,
        )

    def _status_of(self, folder: str, answers: list[tuple[Any, Items]], command: str) -> Items:
        """The STATUS response about ``folder`` (another folder's, sent unasked, is not it)."""
        wanted = self._name(folder)
        for name, info in answers[::-1]:  # the latest, should an older one linger
            text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
            if self._client is not None and self._client.folder_encode:
                with suppress(Exception):  # imapclient decodes bytes; a str it returns as is
                    text = decode_utf7(text.encode("utf-8"))
            if text == wanted or (wanted.upper() == "INBOX" and text.upper() == "INBOX"):
                return info
        raise self._unusable(command, f"no STATUS response about {folder!r}", "STATUS")

    def changed_flags(self, folder: str, since_modseq: int) -> dict[int, tuple[str, ...]]:
        if not self.capabilities.condstore:
            return {}
        self._ensure_selected(folder)
        changed = self._search(["MODSEQ", str(int(since_modseq) + 1)], breaks="CONDSTORE")
        if not changed:
            return {}
        out: dict[int, tuple[str, ...]] = {}
        for chunk in _chunks(changed):
            answers, problems, _client = self._fetch_items(chunk, ["FLAGS"], "UID FETCH FLAGS")
            if problems:
                raise ServerAnswerError(f"account {self.account}: {problems[min(problems)]}")
            out.update({uid: _flags(item.get(b"FLAGS")) for uid, item in answers.items()})
        return out

    def _ensure_selected(self, folder: str) -> Client:
        if self._selected != folder or self._selected_read_only != self.read_only:
            self.select(folder)
        assert self._client is not None
        return self._client

    # -- messages --------------------------------------------------------------------------

    def _search(self, criteria: list[Any], breaks: str | None = None) -> list[int]:
        """UID SEARCH: the UIDs, ascending, each once. Every word of the ``* SEARCH``
        lines must be a number (imapclient skips a NIL or a word after the first number,
        which would make a message look gone). ``breaks``: the extension the criteria
        need; a BAD answer disables it and finds nothing."""
        command = f"UID SEARCH {criteria[0]}"
        with self._guard(command):
            client = self._cmd("UID SEARCH")
            try:
                found = client.search(criteria)
            except imap_exc.IMAPClientAbortError:
                raise
            except imap_exc.IMAPClientError as exc:
                if breaks is None or not refused_with_bad(exc):
                    raise
                self._disable(breaks, command, server_text(exc))
                return []
        for line in client.heard:
            words = line.split(b"(", 1)[0].split()  # a (MODSEQ n) part ends the UIDs
            if words[:2] == [b"*", b"SEARCH"] and not all(w.isdigit() for w in words[2:]):
                raise self._unusable(command, "a word among the UIDs", "SEARCH")
        return sorted({int(u) for u in found})

    def uids_above(self, folder: str, uid: int) -> list[int]:
        self._ensure_selected(folder)
        return [u for u in self._search(["UID", f"{uid + 1}:*"]) if u > uid]

    def uids_since(self, folder: str, since: str | None) -> list[int]:
        self._ensure_selected(folder)
        criteria: list[Any] = ["ALL"] if since is None else ["SINCE", date.fromisoformat(since)]
        return self._search(criteria)

    def existing(self, folder: str, uids: Sequence[int]) -> set[int]:
        self._ensure_selected(folder)
        found: set[int] = set()
        for chunk in _chunks(sorted(uids)):
            found.update(self._search(["UID", ",".join(str(u) for u in chunk)]))
        return found & set(uids)

    # How a message is identified across folders: its Message-ID header here; Gmail
    # overrides these with its server-assigned X-GM-MSGID.
    IDENTITY_ITEMS: tuple[str, ...] = ("BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]",)
    SERVER_IDENTITY = False  # fetch() asks for the identity too (Message-ID is in the body)

    def _identity_of(self, item: dict[bytes, Any]) -> str | None:
        raw = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), b"")
        value = email.message_from_bytes(raw or b"", policy=email.policy.compat32).get("Message-ID")
        return " ".join(str(value).split()) if value else None

    def _identity_answered(self, item: Items) -> bool:
        """Whether the answer carries every identity item: a whole header block (it ends
        with a blank line; one without Message-ID is an answer too), a usable X-GM-MSGID.
        NIL, nothing, or a header block cut short is not."""
        for wanted in self.IDENTITY_ITEMS:
            prefix = wanted.upper().replace(".PEEK", "").split(" ")[0].encode()
            values = [v for k, v in item.items() if k.startswith(prefix) and v is not None]
            if not values:
                return False
            if prefix.startswith(b"BODY[HEADER") and not all(
                isinstance(v, bytes) and (v in (b"\r\n", b"\n") or _header_complete(v))
                for v in values
            ):
                return False
        try:
            self._identity_of(item)
        except (ValueError, TypeError):
            return False
        return True

    def _fetch_items(
        self, uids: Sequence[int], items: Sequence[str], command: str = "UID FETCH"
    ) -> tuple[dict[int, Items], dict[int, str], Client]:
        """One UID FETCH: the items per UID asked for, and why (quoting the server) some
        UIDs' answers cannot be used: a response without a UID (every UID left unanswered
        could be its message), or two responses that disagree about a UID. Responses
        about UIDs not asked for are ignored. The client comes back for more quotes."""
        with self._guard(command):
            client = self._cmd("UID FETCH")
            responses = client.fetch_responses(uids, items)
        asked = set(uids)
        answers: dict[int, Items] = {}
        problems: dict[int, str] = {}
        anonymous = False
        for response in responses:
            uid = _number(response.get(b"UID"))
            if uid is None:
                anonymous = True
                continue
            if uid not in asked:
                continue
            merged = answers.setdefault(uid, {})
            for key, value in response.items():
                if key in merged and merged[key] != value:
                    why = f"two different answers for {key.decode()} of UID {uid}"
                    problems[uid] = self._problem(client, why, uid, command)
                merged[key] = value
        if anonymous:
            said = client.said("FETCH", lacking="UID")
            for uid in asked - answers.keys():
                problems[uid] = (
                    f"{command}: a response without a UID (it may be UID {uid}'s); "
                    f"the server said: {said}"
                )
        return answers, problems, client

    def _left_out(
        self, folder: str, asked: Sequence[int], answered: Iterable[int], client: Client
    ) -> dict[int, str]:
        """Why each UID a FETCH answer left out, though still in the folder, is unsure (one
        expunged meanwhile is simply gone). One UID SEARCH, only when some are missing."""
        missing = sorted(set(asked) - set(answered))
        if not missing:
            return {}
        said = client.said()
        return {
            uid: f"UID FETCH: no answer for UID {uid}, which is there; the server said: {said}"
            for uid in sorted(self.existing(folder, missing))
        }

    @staticmethod
    def _problem(client: Client, why: str, uid: int, command: str = "UID FETCH") -> str:
        return f"{command}: {why}; the server said: {client.said(f'UID {uid}')}"

    def _message(self, uid: int, item: Items, max_bytes: int, client: Client) -> FetchedMessage:
        """The message in an answer, or a message with the reason it cannot be trusted."""
        body = item.get(b"BODY[]<0>", item.get(b"BODY[]"))
        if not isinstance(body, bytes):
            return FetchedMessage(uid, b"", 0, problem=self._problem(client, "no BODY[]", uid))
        raw = body[:max_bytes]  # a server that ignores the partial range sends it all
        size = _number(item.get(b"RFC822.SIZE"))
        size = max(size, len(body)) if size is not None else len(body)
        if len(raw) < min(size, max_bytes) and not _header_complete(raw):
            why = f"BODY[]<0> is {len(raw)} of {size} bytes, cut inside the header"
            return FetchedMessage(uid, b"", 0, problem=self._problem(client, why, uid))
        identity = None
        if self.SERVER_IDENTITY:
            if not self._identity_answered(item):
                why = "no usable identity item"
                return FetchedMessage(uid, b"", 0, problem=self._problem(client, why, uid))
            identity = self._identity_of(item)
        when = _when(item.get(b"INTERNALDATE"), client.normalise_times)
        return FetchedMessage(
            uid=uid,
            raw=raw,
            size=size,
            flags=_flags(item.get(b"FLAGS")),
            internal_date=when.isoformat() if when else None,
            identity=identity,
        )

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
            answers, problems, client = self._fetch_items(chunk, items)
            fetched = {
                uid: FetchedMessage(uid, b"", 0, problem=why) for uid, why in problems.items()
            }
            for uid, item in answers.items():
                if uid not in fetched:
                    fetched[uid] = self._message(uid, item, max_bytes, client)
            for uid, why in self._left_out(folder, chunk, fetched.keys(), client).items():
                fetched[uid] = FetchedMessage(uid, b"", 0, problem=why)
            used = sum(len(m.raw) for m in fetched.values())
            out.extend(fetched[uid] for uid in chunk if uid in fetched)
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
            answers, problems, client = self._fetch_items(chunk, [*self.IDENTITY_ITEMS, *extra])
            problems.update(
                (uid, self._problem(client, "no usable identity item", uid))
                for uid, item in answers.items()
                if uid not in problems and not self._identity_answered(item)
            )
            problems.update(self._left_out(folder, chunk, answers.keys() | problems.keys(), client))
            if problems:  # which message is which is unsure: no answer is used
                raise ServerAnswerError(f"account {self.account}: {problems[min(problems)]}")
            for uid, item in answers.items():
                when = _when(item.get(b"INTERNALDATE"), client.normalise_times)
                if when is not None and when.tzinfo is None:
                    when = when.astimezone()  # imapclient gives local naive times by default
                out[uid] = Identity(self._identity_of(item), when)
        return out

    def message_ids_from(self, folder: str, uid: int) -> dict[int, str | None]:
        return self.message_ids(folder, self.uids_above(folder, max(0, uid - 1)))

    def find_message_id(self, folder: str, message_id: str) -> list[int]:
        self._ensure_selected(folder)
        candidates = self._search(["HEADER", "Message-ID", message_id])
        if not candidates:
            return []
        exact = self.message_ids(folder, candidates)
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
        for chunk in _chunks(uids):
            if self.capabilities.move and self._moved(chunk, destination):
                continue
            if self._uid_expunge_broken(folder):
                raise MailboxError(
                    f"account {self.account}: cannot move to {destination}: the server's "
                    "UID EXPUNGE does not work, so a copy's original cannot be removed safely"
                )
            self.copy(folder, chunk, destination)
            self.delete(folder, chunk)

    def _moved(self, uids: list[int], destination: str) -> bool:
        """UID MOVE; False when the server answered BAD (it did nothing): MOVE is then
        broken for this account and the caller falls back to COPY."""
        command = f"UID MOVE to {destination}"
        with self._guard(command):
            try:
                self._cmd("UID MOVE").move(uids, self._name(destination))
            except imap_exc.IMAPClientAbortError:
                raise
            except imap_exc.IMAPClientError as exc:
                if not refused_with_bad(exc):
                    raise
                self._disable("MOVE", command, server_text(exc))
                return False
        return True

    def _uid_expunge_broken(self, folder: str) -> bool:
        """Whether the advertised UID EXPUNGE answers BAD, tried once (on a UID no message
        has) before the first COPY whose original it must remove: learning it only after
        the COPY would leave a duplicate behind."""
        if self.capabilities.uidplus and not self._uid_expunge_tried:
            self._uid_expunge_tried = True
            self._ensure_selected(folder)
            self._uid_expunge([NO_SUCH_UID])
        return "UIDPLUS" in self._broken

    def _uid_expunge(self, uids: list[int]) -> bool:
        """UID EXPUNGE; False when answered BAD (UIDPLUS is then broken for this account)."""
        with self._guard("UID EXPUNGE"):
            try:
                self._cmd("UID EXPUNGE").uid_expunge(uids)
            except imap_exc.IMAPClientAbortError:
                raise
            except imap_exc.IMAPClientError as exc:
                if not refused_with_bad(exc):
                    raise
                self._disable("UIDPLUS", "UID EXPUNGE", server_text(exc))
                return False
        return True

    def probe(self, folder: str) -> None:
        """Try each advertised extension the daemon uses, harmlessly (on ``folder`` and a
        UID no message has), so that one answered BAD shows as broken (check-config)."""
        self.status(folder)  # CONDSTORE: HIGHESTMODSEQ
        if self.settings.kind == "gmail":
            return  # labels: MOVE and EXPUNGE are never sent to Gmail
        self._ensure_selected(folder)
        if self.capabilities.move:
            with suppress(MailboxError):  # NO (nothing to move) is an answer: MOVE works
                self._moved([NO_SUCH_UID], folder)
        if self.capabilities.uidplus:
            self._uid_expunge_tried = True
            with suppress(MailboxError):
                self._uid_expunge([NO_SUCH_UID])

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
            if not self._uid_expunge(chunk):
                self.remove_flags(folder, chunk, ["\\Deleted"])  # whole again, not removed
                raise MailboxError(
                    f"account {self.account}: UID EXPUNGE refused: {self._broken['UIDPLUS']}"
                )

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
