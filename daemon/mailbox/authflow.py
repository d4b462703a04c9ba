"""``cleaninbox auth ACCOUNT``: get a refresh token with the OAuth2 installed-app flow
(authorization code + PKCE, loopback redirect; RFC 8252), as Google and Microsoft ask of
desktop and command-line clients.

A one-shot HTTP listener on 127.0.0.1 (random port) receives the redirect; the code is
exchanged (authlib) and the refresh token written to the account's ``refresh_token_file``
(mode 0600). The daemon reads that file at every refresh, so a running daemon recovers
from ``invalid_grant`` without a restart.
"""

from __future__ import annotations

import secrets
import threading
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

from daemon.config.settings import Account
from daemon.errors import AuthError, ConfigError
from daemon.mailbox.oauth import write_secret

PAGE = (
    "<!doctype html><title>CleanInbox</title><p>{message}</p>"
    "<p>You can close this window and return to the terminal.</p>"
)


class _Redirect:
    """The loopback listener: waits for exactly one redirect carrying code/state/error."""

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.received = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                if "code" not in params and "error" not in params:
                    self.send_response(404)
                    self.end_headers()
                    return
                outer.params = params
                ok = "code" in params
                body = PAGE.format(
                    message="CleanInbox is authorised." if ok else "Authorisation was refused."
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.received.set()

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def wait(self, timeout: float) -> dict[str, str]:
        thread = threading.Thread(target=self._serve, daemon=True)
        thread.start()
        if not self.received.wait(timeout):
            self.server.server_close()
            raise AuthError(f"no authorisation came back within {timeout:g} s")
        return self.params

    def _serve(self) -> None:
        while not self.received.is_set():
            self.server.handle_request()
        self.server.server_close()


def authorize(
    account: Account,
    *,
    open_browser: bool = True,
    timeout: float = 300.0,
    say: Callable[[str], None] = print,
) -> str:
    """Run the flow for ``account``; returns where the refresh token was written."""
    from authlib.integrations.httpx_client import OAuth2Client, OAuthError

    oauth = account.oauth2
    if oauth is None:
        raise ConfigError(f"account {account.name} has no oauth2 section")
    if not oauth.auth_url:
        raise ConfigError(f"account {account.name}: oauth2.auth_url is required for auth")
    if oauth.refresh_token_file is None:
        raise ConfigError(
            f"account {account.name}: set oauth2.refresh_token_file so the token can be saved"
        )
    redirect = _Redirect()
    client = OAuth2Client(
        client_id=oauth.client_id,
        client_secret=oauth.client_secret(account.name),
        scope=oauth.scope,
        redirect_uri=redirect.uri,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_post",
        timeout=oauth.timeout,
    )
    verifier = secrets.token_urlsafe(48)
    extra = {"login_hint": account.username} if account.username else {}
    if oauth.provider == "google":
        extra |= {"access_type": "offline", "prompt": "consent"}  # else no refresh token
    url, state = client.create_authorization_url(oauth.auth_url, code_verifier=verifier, **extra)
    say(f"Open this address in a browser and allow access for {account.username or account.name}:")
    say(url)
    if open_browser:
        webbrowser.open(url)
    params = redirect.wait(timeout)
    if "error" in params:
        raise AuthError(
            f"account {account.name}: the provider refused: {params['error']} "
            f"{params.get('error_description', '')}".strip()
        )
    if params.get("state") != state:
        raise AuthError(f"account {account.name}: the redirect's state does not match; retry")
    try:
        token = client.fetch_token(oauth.token_url, code=params["code"], code_verifier=verifier)
    except OAuthError as exc:
        raise AuthError(
            f"account {account.name}: exchanging the code failed: {exc.error} "
            f"{exc.description or ''}".strip()
        ) from exc
    finally:
        client.close()
    refresh = token.get("refresh_token")
    if not refresh:
        raise AuthError(
            f"account {account.name}: the provider returned no refresh token (for Google, "
            "remove CleanInbox's access at myaccount.google.com/permissions and retry)"
        )
    write_secret(oauth.refresh_token_file, str(refresh))
    return str(oauth.refresh_token_file)
