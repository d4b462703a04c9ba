"""OAuth2 access tokens for IMAP (XOAUTH2, OAUTHBEARER) from a stored refresh token.

One :class:`TokenSource` per account, shared by its triage and IDLE connections (thread
safe). A token is refreshed ``refresh_margin`` seconds before it expires, and at once when
the server rejects it (a token can be revoked or expire early); the caller then retries
the login once. ``invalid_grant`` from the token endpoint means the refresh token itself
is dead: :class:`~daemon.errors.ReauthorizeError`, which marks the account as needing a
person (``cleaninbox auth ACCOUNT``) while every other account keeps running.

The token exchange uses authlib; the SASL exchange is ours because the IMAP libraries
answer a server's error challenge with the token again instead of the empty response that
RFC 7628 (OAUTHBEARER) and Google's XOAUTH2 documentation require.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from daemon.config.settings import Account, OAuth2Settings
from daemon.errors import AuthError, ConnectionLostError, ReauthorizeError

log = structlog.get_logger(__name__)


def sasl_initial_response(mechanism: str, user: str, token: str, host: str, port: int) -> bytes:
    """The client's first SASL message for XOAUTH2 or OAUTHBEARER (RFC 7628 section 3.1)."""
    if mechanism.upper() == "XOAUTH2":
        # https://developers.google.com/gmail/imap/xoauth2-protocol
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    return f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


class SaslResponder:
    """imaplib's authobject: the initial response first, then an empty response to the
    server's error challenge (so the server ends the exchange with a tagged NO)."""

    def __init__(self, initial: bytes) -> None:
        self.initial = initial
        self.challenges: list[bytes] = []

    def __call__(self, challenge: bytes) -> bytes:
        self.challenges.append(challenge)
        return self.initial if len(self.challenges) == 1 else b""

    @property
    def error(self) -> str | None:
        """The server's error challenge (JSON for XOAUTH2/OAUTHBEARER), if it sent one."""
        if len(self.challenges) < 2:
            return None
        return self.challenges[-1].decode("utf-8", "replace")


class TokenSource:
    def __init__(
        self,
        account: Account,
        *,
        on_refresh: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if account.oauth2 is None:
            raise ValueError(f"account {account.name} has no oauth2 settings")
        self.account = account.name
        self.settings: OAuth2Settings = account.oauth2
        self.on_refresh = on_refresh
        self.clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def access_token(self, *, rejected: str | None = None) -> str:
        """A valid access token. ``rejected``: the token the server just refused (another
        thread may already have replaced it)."""
        with self._lock:
            margin = self.settings.refresh_margin
            fresh = self._token is not None and self._expires_at - margin > self.clock()
            if fresh and (rejected is None or self._token != rejected):
                return str(self._token)  # (another thread may have refreshed already)
            if rejected is not None and self._token == rejected:
                reason = "rejected"
            else:
                reason = "expiring" if self._token is not None else "start"
            return self._refresh(reason)

    def _refresh(self, reason: str) -> str:
        from authlib.integrations.httpx_client import OAuth2Client, OAuthError

        oauth = self.settings
        refresh_token = oauth.refresh_token(self.account)
        client = OAuth2Client(
            client_id=oauth.client_id,
            client_secret=oauth.client_secret(self.account),
            token_endpoint_auth_method="client_secret_post",
            timeout=oauth.timeout,
        )
        try:
            token = client.refresh_token(str(oauth.token_url), refresh_token=refresh_token)
        except OAuthError as exc:
            if exc.error == "invalid_grant":
                raise ReauthorizeError(
                    f"account {self.account}: the OAuth2 provider refused the refresh token "
                    f"(invalid_grant{': ' + exc.description if exc.description else ''}); "
                    f"re-authorise this account with `cleaninbox auth {self.account}`"
                ) from exc
            raise AuthError(
                f"account {self.account}: token endpoint {oauth.token_url} refused the "
                f"refresh: {exc.error}{': ' + exc.description if exc.description else ''}"
            ) from exc
        except Exception as exc:  # httpx transport errors, bad JSON, 5xx
            raise ConnectionLostError(
                f"account {self.account}: token endpoint {oauth.token_url} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            client.close()
        access = token.get("access_token")
        if not access:
            raise AuthError(f"account {self.account}: the token response has no access_token")
        self._token = str(access)
        self._expires_at = self.clock() + float(token.get("expires_in") or 3600)
        rotated = token.get("refresh_token")
        if rotated and rotated != refresh_token:
            self._store_rotated(str(rotated))
        log.info(
            "oauth_token_refreshed",
            account=self.account,
            reason=reason,
            expires_in=token.get("expires_in"),
        )
        if self.on_refresh is not None:
            self.on_refresh(reason)
        return self._token

    def _store_rotated(self, refresh_token: str) -> None:
        """Providers that rotate refresh tokens (Microsoft) invalidate the old one."""
        path = self.settings.refresh_token_file
        if path is None:
            log.warning(
                "oauth_refresh_token_rotated",
                account=self.account,
                note="the provider issued a new refresh token but it lives in an environment "
                "variable; use refresh_token_file so it can be kept",
            )
            return
        write_secret(path, refresh_token)


_sources: dict[str, TokenSource] = {}
_sources_lock = threading.Lock()


def token_source(account: Account, on_refresh: Callable[[str], None] | None = None) -> TokenSource:
    """The process's one TokenSource for ``account`` (its triage and IDLE connections share
    the access token, so it is refreshed once, not once per connection)."""
    with _sources_lock:
        source = _sources.get(account.name)
        if source is None or source.settings is not account.oauth2:
            source = _sources[account.name] = TokenSource(account, on_refresh=on_refresh)
        elif on_refresh is not None:
            source.on_refresh = on_refresh
        return source


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
