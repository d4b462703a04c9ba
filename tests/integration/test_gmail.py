"""kind: gmail against a scripted peer that answers like Gmail (tests/gmail_peer.py: no
Gmail runs here, and no open-source server speaks X-GM-EXT-1, so this is the one fake
server in the suite; each behaviour it models names the Google page it follows).

The daemon itself runs for real (`cleaninbox once` processes, real SQLite state).
"""

from __future__ import annotations

import sqlite3
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from imapclient import IMAPClient

from daemon.config.settings import load_settings
from daemon.errors import ConfigError
from tests.dovecot import make_certificate
from tests.gmail_peer import ALL_MAIL, GmailPeer
from tests.mail_fixtures import cli, email
from tests.scaffold import NEVER_ABSTAIN, imap_account, write_settings

USER, APP_PASSWORD = "me@gmail.com", "abcd efgh ijkl mnop"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("gmail-cert"))


@pytest.fixture
def peer(certificate: tuple[Path, Path]) -> Iterator[GmailPeer]:
    server = GmailPeer({USER: APP_PASSWORD}, *certificate)
    yield server
    server.close()


@pytest.fixture
def gmail(tmp_path: Path, tiny_bundle: Path, peer: GmailPeer, certificate: tuple[Path, Path]):
    """Write cleaninbox.yaml for the peer; returns a function running `cleaninbox once`."""

    def configure(**account: Any) -> None:
        gmail_account = imap_account(
            USER,
            peer.port,
            name="gmail",
            kind="gmail",
            ca_file=certificate[0],
            password_env="CLEANINBOX_GMAIL_APP_PASSWORD",  # the app-password path
            **account,
        )
        write_settings(
            tmp_path, tiny_bundle, [gmail_account], log_format="json", classifier=NEVER_ABSTAIN
        )

    def once(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        app_password = {"CLEANINBOX_GMAIL_APP_PASSWORD": APP_PASSWORD}
        return cli(tmp_path, "once", check=False, env={**app_password, **(env or {})}, timeout=120)

    configure()
    once.configure = configure  # type: ignore[attr-defined]
    once.path = tmp_path  # type: ignore[attr-defined]
    return once


def deliver(peer: GmailPeer, n: int, seed: int) -> list[int]:
    queries = ["my card was stolen", "I was charged twice", "how do I top up"]
    return [peer.accounts[USER].deliver(email(queries[i % 3], seed + i)) for i in range(n)]


def decisions(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path / "var/state.db") as db:
        return db.execute("SELECT message_id, status, action FROM decisions ORDER BY id").fetchall()


def test_move_is_label_plus_archive_never_expunge(gmail: Any, peer: GmailPeer) -> None:
    assert gmail().returncode == 0  # first start: mail already there is left alone
    ids = deliver(peer, 3, 100)
    result = gmail()
    assert result.returncode == 0, result.stderr
    account = peer.accounts[USER]
    for msgid in ids:
        message = account.messages[msgid]
        assert "Triage/All" in message.labels
        assert "\\Inbox" not in message.labels  # archived: Gmail's own "move"
        assert account.where(msgid) == {"Triage/All", ALL_MAIL}
        assert any(f.startswith("$intent_") for f in message.flags)
    # Labels only: never MOVE, COPY, \Deleted or EXPUNGE (their outcome on Gmail depends on
    # a per-user setting that can mean "delete forever").
    for verb in ("UID MOVE", "UID COPY", "UID EXPUNGE", "EXPUNGE"):
        assert peer.sent(verb) == 0, verb
    assert not any("\\Deleted" in c for c in peer.commands)
    rows = decisions(gmail.path)
    assert [r[0] for r in rows] == [f"X-GM-MSGID:{m}" for m in ids]  # Gmail's identity
    assert {r[1] for r in rows} == {"done"}
    stores = peer.sent("UID STORE")
    assert gmail().returncode == 0
    assert peer.sent("UID STORE") == stores  # a rerun changes nothing


def test_label_only_mode_leaves_mail_in_the_inbox(gmail: Any, peer: GmailPeer) -> None:
    gmail.configure(gmail_move="label")
    assert gmail().returncode == 0
    (msgid,) = deliver(peer, 1, 200)
    assert gmail().returncode == 0
    assert peer.accounts[USER].messages[msgid].labels == {"\\Inbox", "Triage/All"}
    assert gmail().returncode == 0  # and it is not triaged again
    assert len(decisions(gmail.path)) == 1


def test_killed_at_every_command_reconciles_by_x_gm_msgid(
    gmail: Any, peer: GmailPeer, tmp_path: Path
) -> None:
    assert gmail().returncode == 0
    n, completed = 0, False
    while not completed:
        n += 1
        assert n < 40, "the cycle never completed"
        ids = deliver(peer, 3, 300 + 10 * n)
        killed = gmail(env={"CLEANINBOX_TEST_KILL_AT_COMMAND": str(n)})
        completed = killed.returncode == 0
        if not completed:
            assert killed.returncode == -9, killed.stderr
            assert gmail().returncode == 0  # restart: reconcile, then finish the batch
        account = peer.accounts[USER]
        for msgid in ids:
            labels = account.messages[msgid].labels
            assert labels == {"Triage/All"}, (n, labels)  # labelled once, archived once
            assert list(account.folders["Triage/All"].uids.values()).count(msgid) == 1
        rows = decisions(tmp_path)
        assert {r[1] for r in rows} <= {"done"}, (n, rows)  # nothing pending or lost
        assert {f"X-GM-MSGID:{m}" for m in ids} <= {r[0] for r in rows}
    assert n > 5  # the kills really landed inside the cycle


def test_too_many_connections_is_refused_then_retried(
    gmail: Any, peer: GmailPeer, certificate: tuple[Path, Path]
) -> None:
    peer.max_connections = 2
    context = ssl.create_default_context(cafile=str(certificate[0]))
    others = []
    for _ in range(2):  # another client holds every slot
        client = IMAPClient("127.0.0.1", port=peer.port, ssl=True, ssl_context=context)
        client.login(USER, APP_PASSWORD)
        others.append(client)
    refused = gmail()
    assert refused.returncode == 1
    assert "Too many simultaneous connections" in refused.stdout + refused.stderr
    assert "refused the login for now, will retry" in refused.stdout  # not "check password"
    others.pop().logout()
    assert gmail().returncode == 0
    assert peer.peak[USER] <= 2


def test_gmail_connection_budget_is_checked(tmp_path: Path) -> None:
    account = {"name": "g", "kind": "gmail", "username": USER, "password_env": "X"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"accounts": [{**account, "max_connections": 16}]}))
    with pytest.raises(ConfigError, match="at most 15 connections"):
        load_settings(path)
    path.write_text(yaml.safe_dump({"accounts": [account]}))
    settings = load_settings(path)
    assert settings.accounts[0].host == "imap.gmail.com"
    assert settings.accounts[0].port == 993


def test_throttled_fetch_fails_the_cycle_and_the_next_one_files(
    gmail: Any, peer: GmailPeer
) -> None:
    assert gmail().returncode == 0
    ids = deliver(peer, 2, 400)
    peer.throttle_fetches = 1
    throttled = gmail()
    assert throttled.returncode == 1
    assert "[THROTTLED]" in throttled.stdout
    assert all("\\Inbox" in peer.accounts[USER].messages[m].labels for m in ids)
    assert gmail().returncode == 0
    assert all(peer.accounts[USER].messages[m].labels == {"Triage/All"} for m in ids)


def test_daily_download_budget_stops_fetching(gmail: Any, peer: GmailPeer) -> None:
    # Each fetch reserves fetch_max_bytes per message until the real sizes are known.
    gmail.configure(gmail_fetch_bytes_per_day=1_000_000, fetch_max_bytes=262_144, batch_size=5)
    assert gmail().returncode == 0
    ids = deliver(peer, 5, 500)
    stopped = gmail()
    assert stopped.returncode == 1
    assert "daily Gmail download budget" in stopped.stdout
    assert all("\\Inbox" in peer.accounts[USER].messages[m].labels for m in ids)
    gmail.configure(gmail_fetch_bytes_per_day=1_000_000, fetch_max_bytes=262_144, batch_size=3)
    assert gmail().returncode == 0
    assert all(peer.accounts[USER].messages[m].labels == {"Triage/All"} for m in ids)


def test_not_gmail_is_refused(tmp_path: Path, gmail: Any, peer: GmailPeer) -> None:
    # A Gmail account pointed at a server without X-GM-EXT-1 says so.
    import tests.gmail_peer as module

    saved = module.CAPS_AFTER
    module.CAPS_AFTER = saved.replace("X-GM-EXT-1 ", "")
    try:
        result = gmail()
    finally:
        module.CAPS_AFTER = saved
    assert result.returncode == 1
    assert "does not offer X-GM-EXT-1" in result.stdout
