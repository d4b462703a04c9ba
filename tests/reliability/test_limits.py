"""Connection limits and a slow link (issue 4, test 7): with Dovecot's
``mail_max_userip_connections`` used up by another client the daemon is refused, says
so clearly, backs off and gets through once a slot frees; it never holds more than one
connection per account; over a 1 KiB/s link it still finishes correctly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.dovecot import Dovecot, free_port, running_dovecot
from tests.mail_fixtures import USERS, MailUser, cli
from tests.proxy import Proxy
from tests.reliability.invariant import check, seed_messages
from tests.scaffold import edited_settings, launch_daemon


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    limit = "protocol imap {\n  mail_max_userip_connections = 2\n}\n"
    root = tmp_path_factory.mktemp("dovecot-limited")
    with running_dovecot(root, USERS[:4], extra_config=limit) as server:
        yield server


def through(workdir: Path, proxy: Proxy, user: MailUser, **extra: object) -> None:
    with edited_settings(workdir) as settings:
        settings.update(extra)
        settings["accounts"][0].update(
            host="127.0.0.1", port=proxy.port, tls="none", allow_plaintext=True, username=user.name
        )


def hog(user: MailUser) -> IMAPClient:
    client = user.client()
    client.select_folder("INBOX")
    return client


def test_connection_limit_backoff(workdir: Path, limited: Dovecot) -> None:
    user = MailUser(USERS[0], limited)
    proxy = Proxy(limited.port)
    port = free_port()
    through(
        workdir,
        proxy,
        user,
        poll_interval=1,
        backoff_max=4,
        http={"enabled": True, "listen": f"127.0.0.1:{port}"},
    )
    cli(workdir, "once")
    seeds = seed_messages(user, 5, "limit")
    hogs = [hog(user), hog(user)]  # both slots taken
    daemon = launch_daemon(workdir)
    try:
        time.sleep(6)
        # Refused while the slots are taken (checked in the audit log: no IMAP slot free).
        assert cli(workdir, "history", "--json").stdout == ""
        for client in hogs:
            client.logout()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(user.messages("Triage/All")) < len(seeds):
            time.sleep(0.5)
        assert daemon.process.poll() is None
    finally:
        code = daemon.stop()
        proxy.close()
    assert code == 0
    assert proxy.max_concurrent <= 1  # one connection per account, never more
    refused = [e for e in daemon.events() if e["event"] == "cycle_failed"]
    assert refused and "Maximum number of connections" in refused[0]["error"], refused[:1]
    assert len(refused) <= 6  # backing off, not hammering
    check(user, workdir, seeds, destinations={"Triage/All"})


def test_a_1kib_per_second_link(workdir: Path, limited: Dovecot) -> None:
    user = MailUser(USERS[1], limited)
    proxy = Proxy(limited.port)
    through(workdir, proxy, user)
    cli(workdir, "once")
    seeds = seed_messages(user, 3, "slow")
    proxy.bytes_per_second = 1024
    started = time.monotonic()
    cli(workdir, "once")
    seconds = time.monotonic() - started
    proxy.close()
    assert seconds > 3  # the link really was slow
    check(user, workdir, seeds, destinations={"Triage/All"}, rerun=False)
