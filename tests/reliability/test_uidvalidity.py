"""UIDVALIDITY changes mid-run (issue 4, test 4): ``doveadm mailbox update --uid-validity``
and a folder deleted and recreated. No action on a stale UID; messages are re-identified
by Message-ID; the invariant holds."""

from __future__ import annotations

from pathlib import Path

import yaml

from daemon.service.faults import KILL_AT_WRITE
from tests.dovecot import Dovecot
from tests.mail_fixtures import MailUser, cli, email
from tests.reliability.invariant import check, seed_messages

DESTINATION = "Triage/All"


def uidvalidity(server: Dovecot, user: MailUser, folder: str) -> int:
    out = server.doveadm("mailbox", "status", "-u", user.name, "uidvalidity", folder)
    return int(out.split("uidvalidity=")[1].split()[0])


def test_uidvalidity_update_re_identifies_by_message_id(
    workdir: Path, mail_user: MailUser, dovecot: Dovecot
) -> None:
    cli(workdir, "once")
    keep = email("how do I top up", 90, From="Keep <keep@example.org>")  # stays in INBOX
    mail_user.append(keep)
    first = seed_messages(mail_user, 4, "uv-first")
    cli(workdir, "once")
    later = seed_messages(mail_user, 3, "uv-later")  # arrive, not yet triaged
    old = uidvalidity(dovecot, mail_user, "INBOX")
    dovecot.doveadm(
        "mailbox", "update", "-u", mail_user.name, "--uid-validity", str(old + 1000), "INBOX"
    )
    out = cli(workdir, "once")
    assert "UIDVALIDITY changed" in out.stdout
    assert "3 message(s) since the last cycle re-identified as new" in out.stdout
    check(mail_user, workdir, {**first, **later}, destinations={DESTINATION})
    inbox = mail_user.messages("INBOX")
    assert len(inbox) == 1  # the kept message, not triaged a second time


def test_pending_decision_with_a_stale_uid_is_settled_by_message_id(
    workdir: Path, mail_user: MailUser, dovecot: Dovecot
) -> None:
    cli(workdir, "once")
    seeds = seed_messages(mail_user, 3, "uv-pending")
    crashed = cli(workdir, "once", check=False, env={KILL_AT_WRITE: "2"})  # acted, not done
    assert crashed.returncode == -9
    old = uidvalidity(dovecot, mail_user, "INBOX")
    dovecot.doveadm(
        "mailbox", "update", "-u", mail_user.name, "--uid-validity", str(old + 7), "INBOX"
    )
    cli(workdir, "once")
    check(mail_user, workdir, seeds, destinations={DESTINATION})


def test_folder_deleted_and_recreated(workdir: Path, mail_user: MailUser) -> None:
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["accounts"][0]["folders"] = ["INBOX", "Support"]
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    with mail_user.client() as client:
        client.create_folder("Support")
    cli(workdir, "once")
    before = seed_messages(mail_user, 2, "support-before", folder="Support")
    cli(workdir, "once")
    with mail_user.client() as client:
        client.delete_folder("Support")
        client.create_folder("Support")
    after = seed_messages(mail_user, 2, "support-after", folder="Support")
    out = cli(workdir, "once")
    assert "Support: UIDVALIDITY changed" in out.stdout
    check(mail_user, workdir, {**before, **after}, destinations={DESTINATION}, source="Support")
