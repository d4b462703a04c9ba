"""Connecting and logging in to an IMAP server: TLS, password or OAuth2 (SASL), the
capabilities and hierarchy delimiter, and error messages that say what to fix.
"""

from __future__ import annotations

import imaplib
import socket
import ssl
from contextlib import suppress
from dataclasses import dataclass

import structlog
from imapclient import IMAPClient
from imapclient import exceptions as imap_exc

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
    return f"{where}: {type(exc).__name__}: {exc}"


def server_text(exc: BaseException) -> str:
    """The server's words from an imapclient/imaplib error (bytes reprs unwrapped)."""
    text = str(exc)
    if text.startswith(("b'", 'b"')):
        text = text[2:-1]
    return " ".join(text.split())[:300]


def temporary(said: str) -> bool:
    """A refusal that waiting cures (RFC 5530 codes, Gmail's [THROTTLED] and its
    connection-limit [ALERT]), as opposed to refused credentials."""
    if any(code in said for code in ("[UNAVAILABLE]", "[LIMIT]", "[INUSE]", "[THROTTLED]")):
        return True
    return "[ALERT]" in said and "simultaneous connections" in said.lower()


@dataclass(frozen=True)
class Session:
    """A logged-in connection and what the server said about itself."""

    client: IMAPClient
    capabilities: frozenset[str]
    delimiter: str


def connect(account: Account, tokens: TokenSource | None) -> Session:
    """Connect, secure (implicit TLS or STARTTLS), log in, and enable CONDSTORE when offered.

    Library and socket errors propagate for the caller to classify (``describe_error``).
    """
    context = ssl_context(account) if account.tls != "none" else None
    client = IMAPClient(
        account.host or "",
        port=account.port,
        ssl=account.tls == "implicit",
        ssl_context=context,
        timeout=account.timeout,
    )
    try:
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
        if "CONDSTORE" in caps and "ENABLE" in caps:
            client.enable("CONDSTORE")
        delimiter = "/"
        listing = client.list_folders("", "")
        if listing and listing[0][1]:
            delim = listing[0][1]
            delimiter = delim.decode() if isinstance(delim, bytes) else str(delim)
    except BaseException:
        with suppress(Exception):
            client.shutdown()
        raise
    return Session(client, caps, delimiter)


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
