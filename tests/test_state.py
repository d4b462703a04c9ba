"""The state store: migrations, the write-ahead journal, the single-instance lock."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.errors import StateError
from daemon.store.migrations import MIGRATIONS
from daemon.store.state import NewDecision, StateStore


def decision(uid: int, status: str = "pending", **kw: object) -> NewDecision:
    base = {
        "kind": "triage",
        "account": "a",
        "folder": "INBOX",
        "uidvalidity": 7,
        "uid": uid,
        "message_id": f"<{uid}@x>",
        "size": 10,
        "internal_date": None,
        "intent": "card_arrival",
        "confidence": 0.9,
        "abstain": False,
        "top_k": [("card_arrival", 0.9)],
        "model_version": "v1",
        "rule": "r",
        "action": "move to X",
        "plan": {"rule": "r"},
        "destination": "X",
        "status": status,
    }
    base.update(kw)
    return NewDecision(**base)  # type: ignore[arg-type]


def test_schema_is_migrated_and_wal(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    with StateStore(tmp_path / "s.db") as store:  # reopening migrates nothing
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_journal_round_trip(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        ids = store.record([decision(1), decision(2), decision(3, status="skipped")])
        assert [d.uid for d in store.pending()] == [1, 2]
        store.finish([ids[0]], "done")
        store.finish_each([(ids[1], "failed", "quota exceeded")])
        assert store.pending() == []
        rows = {d.uid: d for d in store.history()}
        assert rows[1].status == "done"
        assert rows[1].done_at is not None
        assert rows[2].reason == "quota exceeded"
        assert rows[1].top_k == [["card_arrival", 0.9]]
        assert store.known_uids("a", "INBOX", 7, [1, 2, 3, 4]) == {1, 2, 3}
        assert store.known_uids("a", "INBOX", 8, [1]) == set()  # another UIDVALIDITY
        with pytest.raises(StateError):
            store.record([decision(1)])  # one triage decision per message
        store.set_folder("a", "INBOX", 7, 42)
        assert store.folder("a", "INBOX").high_water == 42  # type: ignore[union-attr]


def test_model_input_text_is_stored_only_when_given(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        store.record([decision(1), decision(2, text="my card")])
        texts = {d.uid: d.text for d in store.history()}
        assert texts == {1: None, 2: "my card"}


def test_second_instance_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with StateStore(path):
        code = (
            f"from daemon.store.state import StateStore\n"
            f"StateStore(__import__('pathlib').Path({str(path)!r}))\n"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode != 0
        assert "is in use by pid" in result.stderr
    StateStore(path).close()  # free again once the first one closed


def test_corrupt_and_read_only_databases_are_clear_errors(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="corrupt"):
        StateStore(corrupt)
    with pytest.raises(StateError, match="does not exist"):
        StateStore(tmp_path / "none.db", read_only=True)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    StateStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="newer than this CleanInbox"):
        StateStore(path)


def test_backup_while_the_daemon_holds_the_state(tmp_path: Path) -> None:
    state = tmp_path / "var/state.db"
    (tmp_path / "cleaninbox.yaml").write_text(f"state: {state}\n")

    def backup() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "daemon.cli",
                "backup",
                str(tmp_path / "b/copy.db"),
                "--config",
                str(tmp_path / "cleaninbox.yaml"),
            ],
            capture_output=True,
            text=True,
        )

    with StateStore(state) as running:  # the daemon: lock held, WAL with uncheckpointed rows
        running.record([decision(1), decision(2, status="done")])
        result = backup()
        assert result.returncode == 0, result.stderr
        again = backup()  # never overwrites an earlier backup
        assert again.returncode == 1
        assert "exists; choose a new file" in again.stderr
    copy = sqlite3.connect(tmp_path / "b/copy.db")
    assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file
    assert [r[0] for r in copy.execute("SELECT uid FROM decisions ORDER BY uid")] == [1, 2]
    copy.close()
    with StateStore(tmp_path / "b/copy.db") as restored:  # a restore opens like the original
        assert [d.uid for d in restored.pending()] == [1]


def test_every_field_of_a_decision_round_trips(tmp_path: Path) -> None:
    """The record is defined once: what is journaled is what history reads back."""
    new = decision(
        4,
        status="done",
        plan={"v": 2, "rule": "r", "move": "X", "dest_uidnext": {"X": 5}},
        text="model input",
        reason="why",
    )
    with StateStore(tmp_path / "s.db") as store:
        (decision_id,) = store.record([new])
        (stored,) = store.history()
    assert stored.id == decision_id and stored.created_at and stored.done_at
    for name, value in vars(new).items():
        expected = [list(row) for row in value] if name == "top_k" else value
        assert getattr(stored, name) == expected, name


def test_a_schema_2_database_migrates_its_plans(tmp_path: Path) -> None:
    """Databases written before plans were versioned: the plan gains its version and the
    duplicate dest_uidnext column goes; the journaled plan still settles and undoes."""
    from daemon.core.actions import Plan

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {number}")
    old_plan = {
        "rule": "cards",
        "keywords": ["$card"],
        "flag": True,
        "mark_read": False,
        "copies": ["Archive"],
        "move": "Triage/Cards",
        "abstained": False,
        "flags_before": ["\\Seen"],
        "dest_uidnext": {"Archive": 3, "Triage/Cards": None},
    }
    db.execute(
        "INSERT INTO decisions(kind, account, folder, uidvalidity, uid, message_id, plan, "
        "destination, dest_uidnext, status, created_at) VALUES "
        "('triage', 'a', 'INBOX', 7, 1, '<1@x>', ?, 'Triage/Cards', 9, 'pending', 'now')",
        (json.dumps(old_plan),),
    )
    db.commit()
    db.close()
    with StateStore(path) as store:
        columns = {row[1] for row in store.db.execute("PRAGMA table_info(decisions)")}
        (pending,) = store.pending()
    assert "dest_uidnext" not in columns
    assert pending.plan is not None and pending.plan["v"] == 2
    plan = Plan.of(pending)
    assert plan.move == "Triage/Cards" and plan.copies == ("Archive",)
    assert plan.flags == ["$card", "\\Flagged"] and plan.flags_before == ("\\Seen",)
    assert dict(plan.dest_uidnext) == {"Archive": 3}  # null: never looked at
