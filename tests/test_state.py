"""The state store on both engines: migrations, the write-ahead journal, corrections; and
what is SQLite's own (WAL, the single-instance lock, online backup, pre-Alembic files)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from daemon.errors import StateError
from daemon.store import migrations
from daemon.store.schema import metadata
from daemon.store.state import NewDecision, StateStore
from tests.postgres import PostgresServer


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


def _schema_drift(store: StateStore) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.database.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))


def test_migrations_build_exactly_the_schema(state_location: Path | str) -> None:
    """The tables are defined once (daemon/store/schema.py); the Alembic revisions build
    exactly that on either engine, and reopening migrates nothing."""
    with StateStore(state_location) as store:
        assert _schema_drift(store) == []
        with store.database.engine.connect() as conn:
            assert migrations.current(conn) == migrations.head()
    with StateStore(state_location) as store:
        assert store.writes == 0


def test_sqlite_is_wal_and_marked_as_alembic_managed(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db"):
        pass
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == migrations.ALEMBIC_MANAGED
    db.close()


def test_journal_round_trip(state_location: Path | str) -> None:
    with StateStore(state_location) as store:
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


def test_model_input_text_is_stored_only_when_given(state_location: Path | str) -> None:
    with StateStore(state_location) as store:
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


def test_newer_schema_is_refused(state_location: Path | str) -> None:
    """A database written by a newer CleanInbox (a revision this one does not know)."""
    with StateStore(state_location) as store, store.database.transaction() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StateError, match="revision 9999, newer than this CleanInbox"):
        StateStore(state_location)


def test_a_pre_alembic_version_from_the_future_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 8")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="schema version 8, newer than this CleanInbox"):
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


def test_every_field_of_a_decision_round_trips(state_location: Path | str) -> None:
    """The record is defined once: what is journaled is what history reads back."""
    new = decision(
        4,
        status="done",
        plan={"v": 2, "rule": "r", "move": "X", "dest_uidnext": {"X": 5}},
        text="model input",
        reason="why",
    )
    with StateStore(state_location) as store:
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
    db.executescript((Path(__file__).parent / "data" / "state_schema_2.sql").read_text())
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
        with store.database.engine.connect() as conn:
            columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(decisions)")}
            assert migrations.current(conn) == migrations.head()
        (pending,) = store.pending()
    assert "dest_uidnext" not in columns
    assert pending.plan is not None and pending.plan["v"] == 2
    plan = Plan.of(pending)
    assert plan.move == "Triage/Cards" and plan.copies == ("Archive",)
    assert plan.flags == ["$card", "\\Flagged"] and plan.flags_before == ("\\Seen",)
    assert dict(plan.dest_uidnext) == {"Archive": 3}  # null: never looked at


def test_the_remap_rule_counts_come_from_the_journal_on_upgrade(tmp_path: Path) -> None:
    """Upgrading a state made before the remap rule: the model's sure decisions already in
    the journal become its counts (memory decisions and abstentions are not the model's)."""
    from alembic import command

    from daemon.store.migrations import _config

    path = tmp_path / "0005.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        command.upgrade(_config(conn), "0005")
        conn.commit()
        rows = [
            ("card_arrival", 0, None),
            ("card_arrival", 0, None),
            ("card_arrival", 1, None),  # abstained: left for review
            ("card_arrival", 0, 5),  # the memory decided it
            ("lost_or_stolen_card", 0, None),
        ]
        for uid, (intent, abstain, memory_id) in enumerate(rows):
            conn.execute(
                sa.text(
                    "INSERT INTO decisions(kind, account, folder, uidvalidity, uid, intent, "
                    "abstain, memory_id, status, created_at) VALUES ('triage', 'a', 'INBOX', "
                    "7, :uid, :intent, :abstain, :memory_id, 'done', 'now')"
                ),
                {"uid": uid, "intent": intent, "abstain": abstain, "memory_id": memory_id},
            )
        conn.commit()
    engine.dispose()
    with StateStore(path) as store:
        assert store.seen_counts(["a"]) == {"card_arrival": 2, "lost_or_stolen_card": 1}
        store.count_seen("a", {"card_arrival": 3})
        store.count_seen("b", {"card_arrival": 1})
        assert store.seen_counts(["a"]) == {"card_arrival": 5, "lost_or_stolen_card": 1}
        assert store.seen_counts(None)["card_arrival"] == 6


def test_a_sql_ascii_database_holds_utf8_text(pg_server: PostgresServer) -> None:
    """initdb under the C locale makes SQL_ASCII databases, where psycopg hands back bytes
    unless the client asks for UTF-8: the daemon then failed at its first connection
    (SQLAlchemy could not read the server's version) and could not have read text back."""
    name = f"ascii_{uuid.uuid4().hex[:8]}"
    pg_server.admin(
        f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
        "TEMPLATE template0"
    )
    try:
        with StateStore(pg_server.url(name)) as store:
            store.record([decision(1, message_id="<café@x>", text="Où est ma carte ?")])
            (stored,) = store.history()
            assert (stored.message_id, stored.text) == ("<café@x>", "Où est ma carte ?")
    finally:
        pg_server.drop_database(name)
