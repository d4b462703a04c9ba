"""Connection limits and a slow link (issue 4, test 7): with Dovecot's
``mail_max_userip_connections`` used up by another client the daemon is refused, says
so clearly, backs off and gets through once a slot frees; it never holds more than one
connection per account; over a 1 KiB/s link it still finishes correctly."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from imapclient import IMAPClient

from tests.dovecot import PASSWORD, Dovecot, free_port
from tests.mail_fixtures import ENV, USERS, MailUser, cli
from tests.proxy import Proxy
from tests.reliability.invariant import check, seed_messages


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    server = Dovecot(
        tmp_path_factory.mktemp("dovecot-limited"),
        extra_config="protocol imap {\n  mail_max_userip_connections = 2\n}\n",
    )
    for name in USERS[:4]:
        server.add_user(name)
    server.start()
    yield server
    server.stop()


def through(workdir: Path, proxy: Proxy, user: MailUser, **extra: object) -> None:
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings.update(extra)
    settings["accounts"][0].update(
        host="127.0.0.1", port=proxy.port, tls="none", allow_plaintext=True, username=user.name
    )
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))


def hog(server: Dovecot, user: MailUser) -> IMAPClient:
    context = ssl.create_default_context(cafile=str(server.cert))
    client = IMAPClient("127.0.0.1", port=server.tls_port, ssl=True, ssl_context=context)
    client.login(user.name, PASSWORD)
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
    hogs = [hog(limited, user), hog(limited, user)]  # both slots taken
    log = (workdir / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(workdir / "cleaninbox.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
        cwd=workdir,
    )
    try:
        time.sleep(6)
        # Refused while the slots are taken (checked in the audit log: no IMAP slot free).
        assert cli(workdir, "history", "--json").stdout == ""
        for client in hogs:
            client.logout()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(user.messages("Triage/All")) < len(seeds):
            time.sleep(0.5)
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
        log.close()
        proxy.close()
    assert code == 0
    assert proxy.max_concurrent <= 1  # one connection per account, never more
    events = [
        json.loads(line)
        for line in (workdir / "daemon.log").read_text().splitlines()
        if line.startswith("{")
    ]
    refused = [e for e in events if e["event"] == "cycle_failed"]
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
