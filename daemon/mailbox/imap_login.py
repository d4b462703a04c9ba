"""Connecting and logging in to an IMAP server: TLS, password or OAuth2 (SASL), the
capabilities and hierarchy delimiter, and error messages that say what to fix.

:class:`Client` is the IMAPClient the backend talks through: it keeps the lines the
server sent for the current command (so an answer that cannot be used can be quoted)
and hands the SELECT, STATUS and FETCH answers over as parsed but uninterpreted items,
so that a missing or NIL item is the backend's decision, not a ValueError deep inside
the library.
"""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import structlog
from imapclient import IMAPClient
from imapclient import exceptions as imap_exc
from imapclient.response_parser import gen_parsed_response, parse_response

from daemon.config.settings import Account
from daemon.errors import ConfigError
from daemon.mailbox.oauth import SaslResponder, TokenSource, sasl_initial_response

log = structlog.get_logger(__name__)


def ssl_context(account: Account) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(
            cafile=str(account.ca_file) if account.ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"account {account.name}: cannot load ca_file {account.ca_file}: {exc}"
        ) from exc
    if not account.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def describe_error(account: Account, exc: BaseException) -> str:
    where = f"{account.host}:{account.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate of {where} failed verification ({exc.verify_message}); "
            "set ca_file to trust a private CA"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {account.host!r}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection to {where} refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"{where} did not answer within {account.timeout:g} s"
    if isinstance(exc, imap_exc.LoginError):
        said = server_text(exc)
        if temporary(said):
            return f"{where} refused the login for now, will retry: {said}"
        return (
            f"login to {where} as {account.username} failed (check username and password): {said}"
        )
    if isinstance(exc, imap_exc.IMAPClientAbortError | ConnectionError | EOFError):
        return f"connection to {where} was lost: {exc or type(exc).__name__}"
    if _REFUSAL.search(str(exc)):
        return f"{where} answered {server_text(exc)}"
    return f"{where}: {type(exc).__name__}: {exc}"


#: imaplib's and imapclient's wording of a refused command: "UID command error: NO [b'..']".
_REFUSAL = re.compile(r"command error: (?P<status>NO|BAD) \[b?(?P<q>['\"])(?P<text>.*)(?P=q)\]$")


def server_text(exc: BaseException) -> str:
    """The server's words from an imapclient/imaplib error (bytes reprs unwrapped)."""
    text = str(exc)
    refusal = _REFUSAL.search(text)
    if refusal:
        text = f"{refusal['status']} {refusal['text']}"
    elif text.startswith(("b'", 'b"')):
        text = text[2:-1]
    return " ".join(text.split())[:300]


def refused_with_bad(exc: BaseException) -> bool:
    """The server answered BAD: it did not understand the command, so did nothing."""
    refusal = _REFUSAL.search(str(exc))
    return refusal is not None and refusal["status"] == "BAD"


#: Items of a FETCH, STATUS or SELECT answer as parsed (names upper-cased); values are
#: imapclient's atoms: int, bytes, None (NIL), tuples, datetimes.
Items = dict[bytes, Any]


class Client(IMAPClient):  # type: ignore[misc]  # imapclient is untyped
    """IMAPClient that remembers what the server said to the current command and leaves
    the interpretation of SELECT, STATUS and FETCH answers to its caller."""

    HEARD = 2048  # lines kept per command (literals are never kept: they are mail)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.heard: deque[bytes] = deque(maxlen=self.HEARD)
        super().__init__(*args, **kwargs)
        get_line: Callable[[], bytes] = self._imap._get_line

        def heard_line() -> bytes:
            line = get_line()
            self.heard.append(line)
            return line

        self._imap._get_line = heard_line

    def said(self, about: str | None = None, *, lacking: str | None = None) -> str:
        """The server's lines to the current command that mention ``about`` (a word such as
        ``UID 7`` or ``STATUS``) and not ``lacking``, else its last ones: one quoted
        string for an error message."""
        lines = [line.decode("utf-8", "replace") for line in self.heard]
        chosen = [
            line
            for line in lines
            if (about is None or _mentions(line, about))
            and (lacking is None or not _mentions(line, lacking))
        ]
        lines = chosen or lines
        text = " | ".join(" ".join(line.split()) for line in lines[-3:])
        return f'"{text[:400]}"' if text else "(nothing)"

    def _process_select_response(self, resp: Any) -> Items:
        """SELECT's untagged data as sent: every value a list of the raw words."""
        out: Items = {}
        for key, values in resp.items():
            name = (key.encode() if isinstance(key, str) else bytes(key)).upper()
            out[name] = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
        return out

    def statuses(self, folder: str, items: Sequence[str]) -> list[tuple[Any, Items]]:
        """Every ``* STATUS`` response the command brought: (mailbox name, items)."""
        typ, data = self._imap.status(self._normalise_folder(folder), f"({' '.join(items)})")
        self._checkok("status", typ, data)
        parsed = parse_response(data)
        out: list[tuple[Any, Items]] = []
        for at in range(0, len(parsed) - 1, 2):
            name, values = parsed[at], parsed[at + 1]
            if not isinstance(values, tuple) or len(values) % 2:
                raise imap_exc.ProtocolError(f"STATUS items are not pairs: {values!r}")
            out.append((name, _pairs(values)))
        return out

    def fetch_responses(self, uids: Sequence[int], items: Sequence[str]) -> list[Items]:
        """Every ``* n FETCH`` response a UID FETCH brought, in order and unmerged (a
        response without its UID item, or a second one for a UID, stays visible)."""
        uid_set = ",".join(str(u) for u in uids)
        typ, data = self._imap.uid("FETCH", uid_set, f"({' '.join(items)})")
        self._checkok("fetch", typ, data)
        if data == [None]:
            return []
        atoms = gen_parsed_response(data)
        out: list[Items] = []
        for _seq in atoms:
            values = next(atoms, None)
            if not isinstance(values, tuple) or len(values) % 2:
                raise imap_exc.ProtocolError(f"FETCH items are not pairs: {values!r}")
            out.append(_pairs(values))
        return out


def _mentions(line: str, words: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(words)}(?![\w.-])", line, re.IGNORECASE) is not None


def _pairs(values: tuple[Any, ...]) -> Items:
    """(NAME value NAME value ...) as a dict; the names upper-cased bytes."""
    out: Items = {}
    for at in range(0, len(values), 2):
        name = values[at]
        key = name.encode() if isinstance(name, str) else bytes(name) if name else b""
        out[key.upper()] = values[at + 1]
    return out


def temporary(said: str) -> bool:
    """A refusal that waiting cures (RFC 5530 codes, Gmail's [THROTTLED] and its
    connection-limit [ALERT]), as opposed to refused credentials."""
    if any(code in said for code in ("[UNAVAILABLE]", "[LIMIT]", "[INUSE]", "[THROTTLED]")):
        return True
    return "[ALERT]" in said and "simultaneous connections" in said.lower()


@dataclass(frozen=True)
class Session:
    """A logged-in connection and what the server said about itself."""

    client: Client
    capabilities: frozenset[str]
    delimiter: str
    #: Advertised extensions the server refused to use at login (ENABLE answered BAD/NO).
    broken: dict[str, str] = field(default_factory=dict)
    #: The personal namespace's prefix (RFC 2342), e.g. "INBOX." on Cyrus with its
    #: standard namespace or on Courier: the user's folders live under it.
    prefix: str = ""


def connect(account: Account, tokens: TokenSource | None) -> Session:
    """Connect, secure (implicit TLS or STARTTLS), log in, and enable CONDSTORE when offered.

    Library and socket errors propagate for the caller to classify (``describe_error``).
    """
    context = ssl_context(account) if account.tls != "none" else None
    client = Client(
        account.host or "",
        port=account.port,
        ssl=account.tls == "implicit",
        ssl_context=context,
        timeout=account.timeout,
    )
    try:
        # imapclient writes a command and its CRLF separately: with Nagle's algorithm the
        # CRLF waits for the server's delayed ACK (40 ms on Linux) on every SEARCH.
        with suppress(OSError):
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if account.tls == "starttls":
            client.starttls(context)
        if account.oauth2 is not None:
            assert tokens is not None
            _oauth_login(client, account, tokens)
        else:
            client.login(account.username or "", account.password().get_secret_value())
        caps = frozenset(
            c.decode().upper() if isinstance(c, bytes) else str(c).upper()
            for c in client.capabilities()
        )
        broken: dict[str, str] = {}
        if "CONDSTORE" in caps and "ENABLE" in caps:
            try:
                client.enable("CONDSTORE")
            except imap_exc.IMAPClientAbortError:
                raise
            except imap_exc.IMAPClientError as exc:  # advertised, then refused: do without
                broken["CONDSTORE"] = f"ENABLE CONDSTORE: {server_text(exc)}"
        delimiter = "/"
        listing = client.list_folders("", "")
        if listing and listing[0][1]:
            delim = listing[0][1]
            delimiter = delim.decode() if isinstance(delim, bytes) else str(delim)
        prefix = ""
        if "NAMESPACE" in caps:
            try:
                prefix = personal_prefix(client, delimiter)
            except imap_exc.IMAPClientAbortError:
                raise
            except imap_exc.IMAPClientError as exc:  # advertised, then refused or garbled
                broken["NAMESPACE"] = f"NAMESPACE: {server_text(exc)}"
    except BaseException:
        with suppress(Exception):
            client.shutdown()
        raise
    return Session(client, caps, delimiter, broken, prefix)


def personal_prefix(client: IMAPClient, delimiter: str) -> str:
    """The prefix of the first personal namespace (RFC 2342), "" when it has none.

    Cyrus with its standard namespace and Courier answer "INBOX.": the user's folders
    live under INBOX, and a folder the rules name ``Triage/All`` is ``INBOX.Triage.All``
    there; Dovecot and Gmail answer "". An answer that cannot be read raises
    IMAPClientError.
    """
    try:
        personal = client.namespace().personal
    except (ValueError, TypeError, IndexError) as exc:
        raise imap_exc.IMAPClientError(f"unreadable answer ({exc})") from exc
    if not personal:
        return ""
    first = personal[0]
    if not isinstance(first, tuple | list) or len(first) != 2:
        raise imap_exc.IMAPClientError(f"unreadable personal namespace {first!r}")
    prefix = first[0].decode() if isinstance(first[0], bytes) else str(first[0] or "")
    if prefix and not prefix.endswith(delimiter):
        prefix += delimiter  # RFC 2342 advises the delimiter at the end; some leave it off
    return prefix


def _oauth_login(client: IMAPClient, account: Account, tokens: TokenSource) -> None:
    """AUTHENTICATE with an access token; when the server refuses it (revoked, expired
    early), refresh it and try exactly once more."""
    token = tokens.access_token()
    refused = _sasl(client, account, token)
    if refused is None:
        return
    log.info("oauth_token_rejected", account=account.name, server_said=refused)
    token = tokens.access_token(rejected=token)
    refused = _sasl(client, account, token)
    if refused is not None:
        raise imap_exc.LoginError(refused)


def _sasl(client: IMAPClient, account: Account, token: str) -> str | None:
    """One AUTHENTICATE exchange; None on success, else the server's words."""
    assert account.oauth2 is not None
    mechanism = account.oauth2.mechanism.upper()
    responder = SaslResponder(
        sasl_initial_response(
            mechanism, account.username or "", token, account.host or "", account.port or 0
        )
    )
    try:
        # imaplib directly: imapclient's oauth2_login answers an error challenge with
        # the token again instead of the empty response the mechanisms require.
        client._imap.authenticate(mechanism, responder)
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error as exc:
        detail = f" ({responder.error})" if responder.error else ""
        return f"{server_text(exc)}{detail}"
    return None
