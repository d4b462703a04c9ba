"""Network faults through our own TCP proxy (issue 4, tests 2 and 6): the connection is cut
after ``UID MOVE`` reaches the server but before its reply, and on the fallback path
(a Dovecot without MOVE) between COPY and STORE \\Deleted. The invariant holds after."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.dovecot import Dovecot
from tests.mail_fixtures import USERS, MailUser, cli
from tests.proxy import Proxy
from tests.reliability.invariant import check, seed_messages

DESTINATION = "Triage/All"


def through_proxy(workdir: Path, server: Dovecot, proxy: Proxy) -> None:
    """Point the account at the proxy, in front of the server's plaintext listener."""
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    account = settings["accounts"][0]
    account.update(host="127.0.0.1", port=proxy.port, tls="none", allow_plaintext=True)
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))


def start(workdir: Path, user: MailUser) -> None:
    cli(workdir, "once")  # first start: remember where INBOX ends


@pytest.mark.parametrize("forward", [True, False], ids=["move-reached-server", "move-lost"])
def test_cut_after_uid_move(
    forward: bool, workdir: Path, mail_user: MailUser, dovecot: Dovecot
) -> None:
    proxy = Proxy(dovecot.port)
    try:
        through_proxy(workdir, dovecot, proxy)
        start(workdir, mail_user)
        seeds = seed_messages(mail_user, 12, f"cut-move-{forward}")
        proxy.cut_on, proxy.forward_cut = b"UID MOVE", forward
        result = cli(workdir, "once")  # the lost connection is retried within the run
        assert proxy.cuts == 1, result.stderr
        check(mail_user, workdir, seeds, destinations={DESTINATION})
    finally:
        proxy.close()


def test_fallback_cut_between_copy_and_store(workdir: Path, dovecot_without_move: Dovecot) -> None:
    user = MailUser(USERS[0], dovecot_without_move)
    proxy = Proxy(dovecot_without_move.port)
    try:
        through_proxy(workdir, dovecot_without_move, proxy)
        settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
        settings["accounts"][0]["username"] = user.name
        (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
        start(workdir, user)
        seeds = seed_messages(user, 12, "cut-copy")
        proxy.cut_on, proxy.forward_cut = b"(\\Deleted)", False  # COPY done, STORE lost
        out = cli(workdir, "check-config", "--connect")
        assert "MOVE no, UIDPLUS yes" in out.stdout
        cli(workdir, "once")
        assert proxy.cuts == 1
        check(user, workdir, seeds, destinations={DESTINATION})
    finally:
        proxy.close()


def test_without_move_and_uidplus_nothing_is_left_deleted(
    workdir: Path, dovecot_bare: Dovecot
) -> None:
    """Plain EXPUNGE could remove other clients' messages, so without MOVE and UIDPLUS
    CleanInbox does not move: it tags in place and records why."""
    user = MailUser(USERS[1], dovecot_bare)
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["accounts"][0].update(
        username=user.name, port=dovecot_bare.tls_port, ca_file=str(dovecot_bare.cert)
    )
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    start(workdir, user)
    seeds = seed_messages(user, 6, "bare")
    cli(workdir, "once")
    check(user, workdir, seeds, destinations=set(), source="INBOX")
    inbox = user.messages("INBOX")
    assert all(
        any(f.startswith("$intent_") for f in m["flags"])  # type: ignore[union-attr]
        for m in inbox.values()
    )
