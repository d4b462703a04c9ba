"""OAuth2 logins (XOAUTH2, OAUTHBEARER) against a real Dovecot whose oauth2 passdb asks a
token service on loopback (tests/oauth_server.py) whether each bearer token is active:
refresh before expiry, refresh once on the server's rejection, a revoked refresh token
leaving the other accounts running, and `cleaninbox auth` through the loopback flow.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from daemon.config.settings import Account
from daemon.errors import AuthError, ReauthorizeError
from daemon.mailbox.imap import ImapMailbox
from tests.dovecot import PASSWORD, Dovecot, free_port, running_dovecot
from tests.mail_fixtures import ENV, MailUser, email, mid, wait_for
from tests.oauth_server import TokenService
from tests.scaffold import (
    NEVER_ABSTAIN,
    daemon_command,
    dovecot_account,
    launch_daemon,
    write_settings,
)

USERS = [f"oauth{i:02d}" for i in range(8)]


@pytest.fixture(scope="module")
def tokens() -> Iterator[TokenService]:
    service = TokenService()
    yield service
    service.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tokens: TokenService) -> Iterator[Dovecot]:
    root = tmp_path_factory.mktemp("dovecot-oauth")
    introspection = f"{tokens.url}/introspect"
    with running_dovecot(root, USERS, oauth2_introspection_url=introspection) as dovecot:
        yield dovecot


_free = list(USERS)


@pytest.fixture
def user(server: Dovecot) -> MailUser:
    return MailUser(_free.pop(0), server)


def oauth_account(
    server: Dovecot,
    tokens: TokenService,
    user: str,
    directory: Path,
    *,
    name: str = "work",
    refresh_token: str | None = None,
    **oauth: Any,
) -> dict[str, Any]:
    token_file = directory / f"{name}.refresh-token"
    token_file.write_text((refresh_token or tokens.refresh_token_for(user)) + "\n")
    return {
        "name": name,
        "host": "127.0.0.1",
        "port": server.tls_port,
        "ca_file": str(server.cert),
        "username": user,
        "oauth2": {
            "provider": "custom",
            "auth_url": f"{tokens.url}/authorize",
            "token_url": f"{tokens.url}/token",
            "client_id": "cleaninbox-tests",
            "refresh_token_file": str(token_file),
            **oauth,
        },
    }


def mailbox(config: dict[str, Any]) -> ImapMailbox:
    return ImapMailbox(Account.model_validate(config))


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_login_with_each_mechanism(
    server: Dovecot, tokens: TokenService, user: MailUser, tmp_path: Path, mechanism: str
) -> None:
    box = mailbox(oauth_account(server, tokens, user.name, tmp_path, mechanism=mechanism))
    before = tokens.count("token:refresh_token")
    box.open()
    assert "INBOX" in box.list_folders()
    assert box.capabilities.move  # the post-login capabilities, not the greeting's
    box.close()
    assert tokens.count("token:refresh_token") == before + 1


def test_access_token_refreshed_before_it_expires(
    server: Dovecot, tokens: TokenService, user: MailUser, tmp_path: Path
) -> None:
    tokens.lifetime = 3.0
    try:
        box = mailbox(oauth_account(server, tokens, user.name, tmp_path, refresh_margin=1.0))
        with capture_logs() as logs:
            box.open()
            box.close()
            box.open()  # still fresh: no refresh
            box.close()
            time.sleep(2.2)  # within the margin of expiry
            introspected = tokens.count("introspect")
            box.open()
            box.close()
    finally:
        tokens.lifetime = 3600.0
    reasons = [e["reason"] for e in logs if e["event"] == "oauth_token_refreshed"]
    assert reasons == ["start", "expiring"]
    assert not [e for e in logs if e["event"] == "oauth_token_rejected"]
    assert tokens.count("introspect") == introspected + 1  # one AUTHENTICATE, accepted


def test_rejected_token_costs_exactly_one_extra_round_trip(
    server: Dovecot, tokens: TokenService, user: MailUser, tmp_path: Path
) -> None:
    box = mailbox(oauth_account(server, tokens, user.name, tmp_path))
    box.open()
    box.close()
    tokens.invalidate_access_tokens()  # revoked server side; the client thinks it is fine
    refreshes, introspected = tokens.count("token:refresh_token"), tokens.count("introspect")
    with capture_logs() as logs:
        box.open()
    assert "INBOX" in box.list_folders()
    box.close()
    # One refused AUTHENTICATE (the challenge answered with an empty line), one refresh,
    # one accepted AUTHENTICATE.
    assert tokens.count("token:refresh_token") == refreshes + 1
    assert tokens.count("introspect") == introspected + 2
    rejected = [e for e in logs if e["event"] == "oauth_token_rejected"]
    assert len(rejected) == 1
    assert [e["reason"] for e in logs if e["event"] == "oauth_token_refreshed"] == ["rejected"]


def test_a_token_the_server_never_accepts_is_retried_only_once(
    server: Dovecot, tokens: TokenService, user: MailUser, tmp_path: Path
) -> None:
    # The token belongs to another user: Dovecot refuses every one of them.
    other = tokens.refresh_token_for("somebody-else")
    box = mailbox(oauth_account(server, tokens, user.name, tmp_path, refresh_token=other))
    refreshes = tokens.count("token:refresh_token")
    with pytest.raises(AuthError, match=r"login to 127\.0\.0\.1") as failure:
        box.open()
    assert not isinstance(failure.value, ReauthorizeError)
    assert tokens.count("token:refresh_token") == refreshes + 2  # start + one retry, no loop


def test_revoked_refresh_token_asks_for_reauthorisation(
    server: Dovecot, tokens: TokenService, user: MailUser, tmp_path: Path
) -> None:
    refresh = tokens.refresh_token_for(user.name)
    tokens.revoke(refresh)
    box = mailbox(oauth_account(server, tokens, user.name, tmp_path, refresh_token=refresh))
    with pytest.raises(ReauthorizeError) as failure:
        box.open()
    message = str(failure.value)
    assert "invalid_grant" in message
    assert "cleaninbox auth work" in message
    assert refresh not in message


def test_revoked_account_is_unhealthy_others_keep_running_and_auth_heals_it(
    server: Dovecot, tokens: TokenService, tmp_path: Path, tiny_bundle: Path
) -> None:
    good, revoked = MailUser(_free.pop(0), server), MailUser(_free.pop(0), server)
    dead = tokens.refresh_token_for(revoked.name)
    tokens.revoke(dead)
    tokens.default_user = revoked.name  # whoever consents at /authorize
    port = free_port()
    write_settings(
        tmp_path,
        tiny_bundle,
        [
            dovecot_account(server, good.name, name="good"),
            oauth_account(
                server, tokens, revoked.name, tmp_path, name="revoked", refresh_token=dead
            ),
        ],
        poll_interval=1,
        jitter=0,
        backoff_max=2,
        log_format="json",
        http={"enabled": True, "listen": f"127.0.0.1:{port}"},
        classifier=NEVER_ABSTAIN,
    )
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "daemon.log"

    def cycled(account: str) -> bool:
        """A cycle of ``account`` finished (its ``cycle`` event is in the JSON log)."""
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        events = [json.loads(line) for line in lines if line.startswith("{")]
        return any(e.get("event") == "cycle" and e.get("account") == account for e in events)

    # mail present at an account's first cycle is left alone, by design: wait for it
    daemon = launch_daemon(tmp_path, ready=lambda: cycled("good"), what="a first cycle")
    try:
        raw = email("my card was stolen", 9500)
        good.append(raw)
        wait_for(lambda: mid(raw) in good.messages("Triage/All"), 30, "the healthy account")
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503
        assert "revoked:" in ready.text
        assert "cleaninbox auth revoked" in ready.text
        assert "good:" not in ready.text
        metrics = httpx.get(f"{base}/metrics").text
        assert 'cleaninbox_account_auth_failed{account="revoked"} 1.0' in metrics
        assert 'cleaninbox_account_auth_failed{account="good"} 0.0' in metrics

        # A person re-authorises; the running daemon picks the new token up by itself.
        auth = subprocess.Popen(
            daemon_command(tmp_path, "auth", "revoked", "--no-browser", "--timeout", "60"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=tmp_path,
        )
        assert auth.stdout is not None
        url = ""
        while not url.startswith("http"):
            url = auth.stdout.readline().strip()
        assert url.startswith(f"{tokens.url}/authorize?")
        assert "code_challenge_method=S256" in url
        page = httpx.get(url, follow_redirects=True)  # the "browser": consent, redirect
        assert "CleanInbox is authorised" in page.text
        _out, err = auth.communicate(timeout=30)
        assert auth.returncode == 0, err
        token_file = tmp_path / "revoked.refresh-token"
        assert token_file.stat().st_mode & 0o077 == 0  # owner-only
        assert token_file.read_text().strip() != dead

        wait_for(lambda: cycled("revoked"), 30, "the re-login")
        raw2 = email("I want to change my PIN", 9501)
        revoked.append(raw2)
        wait_for(lambda: mid(raw2) in revoked.messages("Triage/All"), 30, "the recovery")
        assert httpx.get(f"{base}/readyz").status_code == 200
    finally:
        daemon.stop()
    text = daemon.log()
    assert dead not in text
    assert PASSWORD not in text
