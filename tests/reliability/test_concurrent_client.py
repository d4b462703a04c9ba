"""A second client works in the mailbox during a run (issue 4, test 5): it moves, deletes
and flags messages CleanInbox has fetched but not yet acted on, and marks an unrelated
message \\Deleted. Vanished UIDs are recorded without errors, flags survive, the unrelated
message survives (CleanInbox never sends a plain EXPUNGE)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import yaml

from tests.dovecot import Dovecot
from tests.mail_fixtures import MailUser, cli, email, mid
from tests.proxy import Proxy
from tests.reliability.invariant import check, locate, seed_messages, state_path


def test_second_client_during_a_run(workdir: Path, mail_user: MailUser, dovecot: Dovecot) -> None:
    unrelated = email("an old message nobody triages", 5)
    mail_user.append(unrelated)
    proxy = Proxy(dovecot.port)
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["accounts"][0].update(
        host="127.0.0.1", port=proxy.port, tls="none", allow_plaintext=True
    )
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    try:
        cli(workdir, "once")  # first start: the unrelated message is old mail
        seeds = seed_messages(mail_user, 12, "concurrent")
        names = sorted(seeds, key=lambda n: int(n.rsplit("-", 1)[1]))
        moved, deleted, flagged = names[0:2], names[2:4], names[4:6]

        def other_client() -> None:
            with mail_user.client() as client:
                client.select_folder("INBOX")
                by_mid = {v["uid"]: k for k, v in mail_user.messages("INBOX").items()}
                uid_of = {by_mid[u]: u for u in by_mid}
                if not client.folder_exists("Elsewhere"):
                    client.create_folder("Elsewhere")
                client.move([uid_of[seeds[n].message_id] for n in moved], "Elsewhere")
                doomed = [uid_of[seeds[n].message_id] for n in deleted]
                client.add_flags(doomed, [b"\\Deleted"])
                client.uid_expunge(doomed)
                client.add_flags([uid_of[seeds[n].message_id] for n in flagged], [b"\\Flagged"])
                client.add_flags([uid_of[mid(unrelated)]], [b"\\Deleted"])

        # Between CleanInbox's fetch and its first action, the other client goes to work.
        proxy.cut_on, proxy.before = b"UID STORE", other_client
        result = cli(workdir, "once")
        assert proxy.cuts == 1, result.stderr
    finally:
        proxy.close()

    untouched = {n: seeds[n] for n in names if n not in moved + deleted}
    check(mail_user, workdir, untouched, destinations={"Triage/All"})
    located = locate(mail_user)
    assert all([c[0] for c in located[n]] == ["Elsewhere"] for n in moved)
    assert all(n not in located for n in deleted)
    assert all("\\Flagged" in located[n][0][1] for n in flagged)
    inbox = mail_user.messages("INBOX")
    assert "\\Deleted" in inbox[mid(unrelated)]["flags"]  # type: ignore[operator]
    db = sqlite3.connect(state_path(workdir))
    reasons = {
        row[0]: row[1]
        for row in db.execute(
            "SELECT message_id, status || ': ' || coalesce(reason, '') FROM decisions"
        )
    }
    db.close()
    for name in moved + deleted:
        assert reasons[seeds[name].message_id].startswith("failed: vanished"), reasons
