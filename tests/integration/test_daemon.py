"""The daemon against a real Dovecot: files mail by rules, exactly once, and can undo; the
journal's tests run on both state engines (SQLite, PostgreSQL), and the core scenarios
(first start, filing, dry run, undo) on a second server too, Cyrus (tests/cyrus.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daemon.model.classifier import Classifier
from tests.mail_fixtures import (
    ENGINES,
    ENV,
    SERVERS,
    MailServer,
    MailUser,
    cli,
    email,
    mid,
    snapshot,
)

#: The journal on both engines with Dovecot, and Cyrus on SQLite.
ENGINES_AND_SERVERS = pytest.mark.parametrize(
    ("engine", "mail_server"),
    [
        *[(engine, "dovecot") for engine in ENGINES],
        pytest.param("sqlite", "cyrus", marks=pytest.mark.containers),
    ],
    indirect=True,
)


@ENGINES_AND_SERVERS
def test_files_new_mail_by_rules_exactly_once(
    workdir: Path, mail_user: MailUser, tiny_bundle: Path
) -> None:
    old = [email("what is my balance", i) for i in range(3)]
    for raw in old:
        mail_user.append(raw)
    first = cli(workdir, "once")
    assert "first start" in first.stdout
    inbox = mail_user.messages("INBOX")
    assert set(inbox) == {mid(r) for r in old}
    assert all(not v["flags"] - {"\\Recent"} for v in inbox.values())  # untouched

    urgent = email("my card was stolen", 10, Subject="URGENT: card stolen")
    keep = email("how do I top up", 11, From="Keep Me <keep@example.org>")
    normal = [email("I was charged twice for a transfer", 12), email("Where is my new card?", 13)]
    for raw in [urgent, keep, *normal]:
        mail_user.append(raw)
    cli(workdir, "once")

    inbox = mail_user.messages("INBOX")
    filed = mail_user.messages("Triage/All")
    assert set(inbox) == {mid(r) for r in old} | {mid(keep)}
    assert "$seen_by_triage" in inbox[mid(keep)]["flags"]  # type: ignore[operator]
    assert set(filed) == {mid(urgent)} | {mid(r) for r in normal}
    assert {"\\Flagged", "$urgent"} <= filed[mid(urgent)]["flags"]  # type: ignore[operator]
    classifier = Classifier(tiny_bundle)
    for raw in [urgent, *normal]:
        from daemon.model.text import email_to_text

        intent = classifier.predict([email_to_text(raw).text])[0].intent
        assert f"$intent_{intent}" in filed[mid(raw)]["flags"]  # type: ignore[operator]
        assert filed[mid(raw)]["raw"] == raw  # byte-identical
        assert "\\Seen" not in filed[mid(raw)]["flags"]  # type: ignore[operator]

    rows = [json.loads(line) for line in cli(workdir, "history", "--json").stdout.splitlines()]
    assert len(rows) == 4
    for row in rows:
        for key in (
            "account",
            "folder",
            "uidvalidity",
            "uid",
            "message_id",
            "intent",
            "confidence",
            "abstain",
            "rule",
            "action",
            "destination",
            "status",
            "reason",
            "created_at",
            "done_at",
        ):
            assert key in row, key
        assert row["status"] == "done"
        assert row["created_at"].endswith("Z")
    by_mid = {r["message_id"]: r for r in rows}
    assert by_mid[mid(urgent)]["rule"] == "vip+file-all"
    assert by_mid[mid(urgent)]["destination"] == "Triage/All"
    assert by_mid[mid(keep)]["destination"] is None

    before = snapshot(mail_user)
    again = cli(workdir, "once")
    assert snapshot(mail_user) == before
    assert len(cli(workdir, "history", "--json").stdout.splitlines()) == 4
    assert " 0 " in again.stdout.splitlines()[1]  # new = 0


@pytest.mark.parametrize("mail_server", SERVERS, indirect=True)
def test_dry_run_changes_nothing(workdir: Path, mail_user: MailUser) -> None:
    cli(workdir, "once")  # first start
    raws = [email("I want a refund", 20 + i) for i in range(3)]
    for raw in raws:
        mail_user.append(raw)
    before = snapshot(mail_user)
    db = workdir / "var" / "state.db"
    state_before = hashlib.sha256(db.read_bytes()).hexdigest()
    out = cli(workdir, "once", "--dry-run")
    assert "dry run" in out.stdout
    assert snapshot(mail_user) == before
    assert cli(workdir, "history", "--json").stdout == ""
    assert hashlib.sha256(db.read_bytes()).hexdigest() == state_before
    cli(workdir, "once")
    assert set(mail_user.messages("Triage/All")) == {mid(r) for r in raws}


@ENGINES_AND_SERVERS
def test_undo_restores_and_is_not_triaged_again(workdir: Path, mail_user: MailUser) -> None:
    cli(workdir, "once")
    raws = [email("my card has not arrived", 30), email("URGENT: fraud", 31, Subject="URGENT")]
    for raw in raws:
        mail_user.append(raw)
    cli(workdir, "once")
    assert len(mail_user.messages("Triage/All")) == 2

    dry = cli(workdir, "undo", "--since", "1h", "--dry-run")
    assert "2 undone" not in dry.stdout
    assert len(mail_user.messages("Triage/All")) == 2
    out = cli(workdir, "undo", "--since", "1h")
    assert "2 undone, 0 failed" in out.stdout
    inbox = mail_user.messages("INBOX")
    assert set(inbox) == {mid(r) for r in raws}
    assert mail_user.messages("Triage/All") == {}
    for raw in raws:
        flags = inbox[mid(raw)]["flags"]
        assert not {f for f in flags if f.startswith("$")}, flags  # type: ignore[union-attr]
        assert "\\Flagged" not in flags  # type: ignore[operator]
        assert inbox[mid(raw)]["raw"] == raw

    cli(workdir, "once")  # the restored messages are new UIDs: not triaged again
    assert set(mail_user.messages("INBOX")) == {mid(r) for r in raws}
    rows = [json.loads(line) for line in cli(workdir, "history", "--json").stdout.splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds.count("undo") == 2
    assert sum(r["reason"] == "restored by undo; not triaged again" for r in rows) == 2
    again = cli(workdir, "undo", "--since", "1h")
    assert "0 undone" in again.stdout  # nothing left to undo


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cleaninbox: error: ")
    return lines[0]


def test_bad_settings_and_rules_fail_with_one_line(workdir: Path, mail_user: MailUser) -> None:
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["accounts"][0]["hots"] = "x"
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    line = one_line_error(cli(workdir, "once", check=False))
    assert "accounts.0.hots: unknown key" in line
    del settings["accounts"][0]["hots"]
    settings["accounts"][0]["tls"] = "none"
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    assert "allow_plaintext" in one_line_error(cli(workdir, "check-config", check=False))
    settings["accounts"][0]["tls"] = "implicit"
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))

    rules = yaml.safe_load((workdir / "rules.yaml").read_text())
    rules["rules"][1]["match"] = {"intent": "card_arival"}
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
    line = one_line_error(cli(workdir, "once", check=False))
    assert "rule 1 (keep-here): unknown intent 'card_arival'; did you mean card_arrival" in line
    rules["rules"][1]["match"] = {"group": "cardz"}
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
    assert "unknown group 'cardz'" in one_line_error(cli(workdir, "check-config", check=False))
    assert not (workdir / "var" / "state.db").exists()  # nothing ran


@pytest.mark.parametrize("mail_server", SERVERS, indirect=True)
def test_check_config_connects(workdir: Path, mail_user: MailUser, mail_server: MailServer) -> None:
    out = cli(workdir, "check-config", "--connect")
    said = "account work ok: MOVE yes, UIDPLUS yes, CONDSTORE yes"
    # Cyrus keeps the user's folders under INBOX. (its standard namespace, tests/cyrus.py)
    assert said + (", folders under INBOX." if mail_server.name == "cyrus" else "\n") in out.stdout
    bad = cli(workdir, "check-config", "--connect", "--set", "accounts=[]", check=False)
    assert bad.returncode == 0  # no accounts is valid
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["accounts"][0]["folders"] = ["INBOX", "Nope"]
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    result = cli(workdir, "check-config", "--connect", check=False)
    assert result.returncode == 2
    assert "folder(s) not found: Nope" in result.stderr


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_backfill_triages_old_mail_in_steps(workdir: Path, mail_user: MailUser) -> None:
    old = [email("how do I activate my card", 60 + i) for i in range(4)]
    for raw in old:
        mail_user.append(raw)
    cli(workdir, "once")  # first start: old mail is left alone
    assert len(mail_user.messages("INBOX")) == 4
    before = snapshot(mail_user)
    cli(workdir, "backfill", "--account", "work", "--limit", "2", "--dry-run")
    assert snapshot(mail_user) == before
    out = cli(workdir, "backfill", "--account", "work", "--limit", "2")
    assert "backfill work" in out.stderr  # the progress bar
    assert len(mail_user.messages("Triage/All")) == 2
    cli(workdir, "backfill", "--account", "work", "--since", "2999-01-01")
    assert len(mail_user.messages("Triage/All")) == 2  # nothing delivered that late
    cli(workdir, "backfill", "--account", "work")
    assert set(mail_user.messages("Triage/All")) == {mid(r) for r in old}
    assert len(cli(workdir, "history", "--json").stdout.splitlines()) == 4
    bad = cli(workdir, "backfill", "--account", "nope", check=False)
    assert bad.returncode == 2 and "no account named 'nope'" in bad.stderr
    bad = cli(workdir, "backfill", "--account", "work", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "is not a date" in bad.stderr


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_a_crash_at_any_state_write_is_recovered_exactly_once(
    workdir: Path, mail_user: MailUser
) -> None:
    """SIGKILL just before the 1st (intent), 2nd (done) and 3rd (high-water) commit of a
    cycle; the next run reconciles and every message ends up filed exactly once."""
    cli(workdir, "once")  # first start
    filed: set[str] = set()
    for kill_at, expected_reason in ((1, None), (2, "already at destination"), (3, None)):
        raws = [email(f"where is my card {kill_at} {i}", 70 + 10 * kill_at + i) for i in range(3)]
        for raw in raws:
            mail_user.append(raw)
        crashed = subprocess.run(
            [
                sys.executable,
                "-m",
                "daemon.cli",
                "once",
                "--config",
                str(workdir / "cleaninbox.yaml"),
            ],
            capture_output=True,
            text=True,
            cwd=workdir,
            timeout=120,
            env={**ENV, "CLEANINBOX_TEST_KILL_AT_WRITE": str(kill_at)},
        )
        assert crashed.returncode == -9, (kill_at, crashed.stdout, crashed.stderr)
        cli(workdir, "once")
        filed |= {mid(r) for r in raws}
        assert set(mail_user.messages("Triage/All")) == filed, kill_at
        assert not filed & set(mail_user.messages("INBOX")), kill_at
        rows = [json.loads(line) for line in cli(workdir, "history", "--json").stdout.splitlines()]
        mine = [r for r in rows if r["message_id"] in {mid(x) for x in raws}]
        assert len(mine) == 3 and all(r["status"] == "done" for r in mine), (kill_at, mine)
        if expected_reason:
            assert all(expected_reason in (r["reason"] or "") for r in mine), mine
        before = snapshot(mail_user)
        cli(workdir, "once")  # and a rerun changes nothing
        assert snapshot(mail_user) == before
