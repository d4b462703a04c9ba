"""Moving a SQLite state to PostgreSQL (``cleaninbox state migrate``), and the commands
that read the state (history, feedback export, backup) on a PostgreSQL state."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from daemon.store.state import StateStore
from tests.postgres import PostgresServer
from tests.scaffold import cli
from tests.test_state import decision


def _settings(workdir: Path, state: str) -> None:
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump({"state": state}))


def _fill(store: StateStore) -> None:
    """Every table: folders, watched, decisions (an undo among them), a correction and its
    correction memory entry."""
    ids = store.record([decision(1, status="done"), decision(2), decision(3, status="done")])
    store.record([decision(1, status="done", kind="undo", undo_of=ids[0], confidence=1 / 3)])
    store.set_folder("a", "INBOX", 7, 3)
    store.set_watched("a", "Triage/Cards", 9, 12, 2**40)
    (done,) = [d for d in store.history() if d.id == ids[2]]
    correction_id, _ = store.add_correction(
        done, "card_arrival", "Triage/Cards", "where is my card?"
    )
    store.remember(
        account="a",
        text="where is my card?",
        said="card_delivery_estimate",
        confident=True,
        chosen="card_arrival",
        model_version="m1",
        embedding=bytes(range(16)),
        max_entries=10,
        correction_id=correction_id,
    )


def test_migrate_copies_everything_verified(tmp_path: Path, pg_url: str) -> None:
    with StateStore(tmp_path / "var/state.db") as sqlite:
        _fill(sqlite)
        before = sqlite.history()
        corrections = sqlite.corrections()
        remembered = sqlite.memory_entries()
    _settings(tmp_path, "var/state.db")
    out = cli(tmp_path, "state", "migrate", "--to", pg_url).stdout
    assert "decisions" in out and "4 rows" in out and "sha256" in out
    assert "set `state: postgresql://postgres@127.0.0.1" in out

    with StateStore(pg_url) as pg:
        assert pg.history() == before  # ids, times, JSON, floats: all as they were
        assert pg.corrections() == corrections
        assert pg.memory_entries() == remembered  # the embedding's bytes too
        assert pg.folder("a", "INBOX") is not None and pg.watched("a", "Triage/Cards") == (
            9,
            12,
            2**40,
        )
        (new_id,) = pg.record([decision(4)])  # the id sequence continues after the copy
        assert new_id == max(d.id for d in before) + 1

    # the other commands read it like the SQLite one
    _settings(tmp_path, pg_url)
    rows = [json.loads(line) for line in cli(tmp_path, "history", "--json").stdout.splitlines()]
    assert [r["uid"] for r in rows] == [1, 2, 3, 1, 4]
    cli(tmp_path, "feedback", "export", "--output", str(tmp_path / "c.csv"))
    assert "where is my card?" in (tmp_path / "c.csv").read_text()
    from training.retrain import load_corrections  # what `retrain --state URL` reads

    assert [(e.text, e.label) for e in load_corrections(None, pg_url)] == [
        ("where is my card?", "card_arrival")
    ]
    backup = cli(tmp_path, "backup", str(tmp_path / "b.dump")).stdout
    assert "backed up" in backup and "b.dump" in backup
    listing = subprocess.run(
        ["pg_restore", "--list", str(tmp_path / "b.dump")], capture_output=True, text=True
    )
    assert "TABLE DATA public decisions" in listing.stdout, listing.stderr


def test_migrate_refuses_what_would_lose_or_mix_data(
    tmp_path: Path, pg_server: PostgresServer
) -> None:
    with StateStore(tmp_path / "var/state.db") as sqlite:
        _fill(sqlite)
    _settings(tmp_path, "var/state.db")
    target = pg_server.url(pg_server.create_database())

    def refused(*args: str) -> str:
        result = cli(tmp_path, "state", "migrate", *args, check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]

    with StateStore(tmp_path / "var/state.db"):  # a daemon holds the SQLite state
        assert "is in use by pid" in refused("--to", target)
    assert "give a postgresql:// URL" in refused("--to", str(tmp_path / "other.db"))
    assert "unsupported database 'mysql'" in refused("--to", "mysql://h/d")
    cli(tmp_path, "state", "migrate", "--to", target)
    assert "migrate into an empty database" in refused("--to", target)  # never mixes two


@pytest.mark.parametrize("bad", ["postgresql://127.0.0.1:1/none", "postgresql://nobody@{host}/x"])
def test_an_unreachable_database_is_one_line(
    tmp_path: Path, pg_server: PostgresServer, bad: str
) -> None:
    _settings(tmp_path, bad.format(host=f"127.0.0.1:{pg_server.port}"))
    result = cli(tmp_path, "history", check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cleaninbox: error: state postgresql://")
