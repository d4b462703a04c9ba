"""Corrections against the real Dovecot: a second client moves messages the daemon filed
into other triage folders; the next cycle records each as a correction (mapped back to an
intent through the rules), the correction memory files the next such message where the
user put the last one, in the same run, and `cleaninbox feedback export` writes the
corrections as a dataset."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

from daemon.core.rules import Rules, load_rules
from daemon.model.bundle import load_manifest
from tests.mail_fixtures import MailUser, cli, email, mid
from tests.scaffold import edited_settings

EXAMPLE_RULES = Path(__file__).resolve().parents[2] / "configs/rules.example.yaml"
QUERIES = [
    "my card was stolen yesterday",
    "why was I charged a fee for my transfer",
    "how long does a top up take",
    "the ATM did not give me my cash",
]


def use_example_rules(workdir: Path, bundle: Path, feedback: bool) -> tuple[Rules, list[str]]:
    """Switch to the example rules; those rules and their folders that file some intent."""
    with edited_settings(workdir) as settings:
        settings["rules"] = str(EXAMPLE_RULES)
        settings["accounts"][0]["feedback"] = feedback
    rules = load_rules(EXAMPLE_RULES, load_manifest(bundle).labels)
    return rules, sorted(f for f in rules.folders() if rules.intents_filed_in(f))


def triage_one(
    workdir: Path, user: MailUser, bundle: Path, query: str, seed: int, *, feedback: bool
) -> tuple[list[str], bytes]:
    """Example rules, a first start, then one message triaged: the folders and the message."""
    _rules, folders = use_example_rules(workdir, bundle, feedback)
    cli(workdir, "once")  # first start
    raw = email(query, seed)
    user.append(raw)
    cli(workdir, "once")
    return folders, raw


def where(user: MailUser, folders: list[str], raw: bytes) -> str:
    for folder in folders:
        if mid(raw) in user.messages(folder):
            return folder
    raise AssertionError(f"{mid(raw)} is in none of {folders}")


def move(user: MailUser, raw: bytes, source: str, destination: str) -> None:
    with user.client() as c:
        if not c.folder_exists(destination):
            c.create_folder(destination)  # the user may file into a folder not made yet
        c.select_folder(source)
        uids = c.search(["HEADER", "Message-ID", mid(raw)])
        assert len(uids) == 1
        c.move(uids, destination)


def test_user_moves_become_corrections_and_export(
    workdir: Path, mail_user: MailUser, tiny_bundle: Path
) -> None:
    rules, folders = use_example_rules(workdir, tiny_bundle, feedback=True)
    cli(workdir, "once")  # first start
    sent = [email(q, 7000 + i) for i, q in enumerate(QUERIES)]
    for raw in sent:
        mail_user.append(raw)
    cli(workdir, "once")
    placed = {mid(raw): where(mail_user, folders, raw) for raw in sent}
    # The user disagrees with two of them.
    first, second = sent[0], sent[1]
    # (a Security folder when the CI model did not file it there already)
    by_preference = sorted(folders, key=lambda f: "Security" not in f)
    target1 = next(f for f in by_preference if f != placed[mid(first)])
    target2 = next(f for f in folders if f not in (placed[mid(second)], target1))
    move(mail_user, first, placed[mid(first)], target1)
    move(mail_user, second, placed[mid(second)], target2)
    out = cli(workdir, "once", "--set", "log_level=info").stderr
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    logged = [e for e in events if e.get("event") == "correction"]
    assert {e["message_id"] for e in logged} == {mid(first), mid(second)}
    for e in logged:
        assert e["corrected"] in rules.intents_filed_in(e["folder"])

    # The next such message (another customer, the same words) goes where the user put
    # the first one: the correction memory decides it, no retrain needed.
    again = email(QUERIES[0], 7000, **{"Message-ID": "<again@cleaninbox.test>"})
    mail_user.append(again)
    out = cli(workdir, "once", "--set", "log_level=info").stderr
    assert where(mail_user, folders, again) == target1
    (decided,) = [
        json.loads(line) for line in out.splitlines() if '"decision"' in line and mid(again) in line
    ]
    assert decided["memory"]["similarity"] >= 0.99, decided
    history = cli(workdir, "history").stdout
    assert "(memory entry" in history

    # Moved again: the correction is updated, not duplicated; our own filing is never one.
    target3 = next(f for f in folders if f not in (target1, placed[mid(first)]))
    move(mail_user, first, target1, target3)
    cli(workdir, "once")
    cli(workdir, "once")  # nothing new: nothing recorded
    export = workdir / "corrections.csv"
    result = cli(workdir, "feedback", "export", "--output", str(export))
    assert "2 correction(s)" in result.stdout
    rows = list(csv.DictReader(export.open()))
    by_folder = {r["folder"]: r for r in rows}
    assert set(by_folder) == {target3, target2}
    for row in rows:
        assert row["text"]  # the model input text stored with the decision
        assert row["category"] in rules.intents_filed_in(row["folder"])
        assert row["predicted"]


def test_without_feedback_nothing_is_stored(
    workdir: Path, mail_user: MailUser, tiny_bundle: Path
) -> None:
    rules_folders, raw = triage_one(
        workdir, mail_user, tiny_bundle, QUERIES[0], 7100, feedback=False
    )
    source = where(mail_user, rules_folders, raw)
    target = next(f for f in rules_folders if f != source)
    move(mail_user, raw, source, target)
    cli(workdir, "once")
    result = cli(workdir, "feedback", "export", "--output", str(workdir / "c.csv"))
    assert "0 correction(s)" in result.stdout
    with sqlite3.connect(workdir / "var/state.db") as db:
        assert (
            db.execute("SELECT count(*) FROM decisions WHERE text IS NOT NULL").fetchone()[0] == 0
        )
        assert db.execute("SELECT count(*) FROM corrections").fetchone()[0] == 0


def test_a_changed_intent_keyword_is_a_correction(
    workdir: Path, mail_user: MailUser, tiny_bundle: Path
) -> None:
    folders, raw = triage_one(workdir, mail_user, tiny_bundle, QUERIES[2], 7200, feedback=True)
    cli(workdir, "once")  # the triage folders have been looked at once
    folder = where(mail_user, folders, raw)
    message = mail_user.messages(folder)[mid(raw)]
    predicted = next(f for f in message["flags"] if f.startswith("$intent_"))  # type: ignore[attr-defined]
    # The user re-tags it in their mail client (e.g. a Thunderbird tag), leaving it there.
    other = (
        "$intent_top_up_failed" if predicted != "$intent_top_up_failed" else "$intent_top_up_limits"
    )
    with mail_user.client() as c:
        c.select_folder(folder)
        (uid,) = c.search(["HEADER", "Message-ID", mid(raw)])
        c.remove_flags([uid], [predicted])
        c.add_flags([uid], [other])
    out = cli(workdir, "once", "--set", "log_level=info").stderr
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    (correction,) = [e for e in events if e.get("event") == "correction"]
    assert correction["how"] == "keyword"
    assert correction["corrected"] == other.removeprefix("$intent_")
    assert correction["predicted"] == predicted.removeprefix("$intent_")
    cli(workdir, "once")  # seen once: not recorded again
    with cli_export(workdir).open() as f:
        rows = list(csv.DictReader(f))
    assert [r["category"] for r in rows] == [other.removeprefix("$intent_")]


def cli_export(workdir: Path) -> Path:
    path = workdir / "export.csv"
    cli(workdir, "feedback", "export", "--output", str(path))
    return path
