"""Two `cleaninbox sweep` workers on one PostgreSQL study: they split its trials (the
total is the config's, not each worker's), never run the same trial, and the results are
written; a storage URL of another database is one error line."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import psycopg
import pytest
import yaml

from tests.postgres import PostgresServer
from training.sweep import STUDY_LOCK_KEY, WORKER_ATTR, StudyStorage

REPO = Path(__file__).resolve().parents[2]
TRIALS = 3


def start_worker(
    cwd: Path, config: Path, storage: str, env: dict[str, str], *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "sweep",
            "--config",
            str(config),
            "--storage",
            storage,
            "--study-name",
            "shared",
            *extra,
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lock_waiters(
    conn: psycopg.Connection[tuple[int]], workers: list[subprocess.Popen[str]]
) -> None:
    """Until every worker has prepared its data and queues for the study's lock."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        waiting = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
        if waiting == (len(workers),):
            return
        for worker in workers:
            if worker.poll() is not None:
                pytest.fail(f"a worker exited early: {worker.communicate()[1][-3000:]}")
        time.sleep(0.2)
    pytest.fail("the workers never queued for the study's lock")


@pytest.mark.trains
def test_two_workers_share_one_postgresql_study(
    tmp_path: Path, pg_url: str, banking77_dir: Path
) -> None:
    # The tiny sweep, narrowed to one-epoch trials (the base config's): seconds each.
    spec = yaml.safe_load((REPO / "configs/sweep-tiny.yaml").read_text())
    spec |= {"base": str(REPO / "configs/train-tiny.yaml"), "trials": TRIALS}
    spec["space"] = {k: v for k, v in spec["space"].items() if k.endswith("_lr")}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(spec))
    # One core each, as on two machines; one worker has its password in the URL, the
    # other in an environment variable (the server trusts local users, so any works).
    env = {**os.environ, "BANKING77_DIR": str(banking77_dir), "OMP_NUM_THREADS": "1"}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        # Held while both start, so both are ready when the first trial is handed out.
        conn.execute("SELECT pg_advisory_lock(%s)", (STUDY_LOCK_KEY,))
        workers = [
            start_worker(tmp_path, config, pg_url.replace("postgres@", "postgres:s3cret@"), env),
            start_worker(
                tmp_path,
                config,
                pg_url,
                {**env, "SWEEP_PW": "s3cret"},
                "--storage-password-env",
                "SWEEP_PW",
            ),
        ]
        try:
            wait_for_lock_waiters(conn, workers)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (STUDY_LOCK_KEY,))
        outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-3000:]
        assert "s3cret" not in stderr

    study = optuna.load_study(
        study_name="shared", storage=pg_url.replace("postgresql://", "postgresql+psycopg://")
    )
    trials = study.get_trials()
    # trials=3 is the study's total: 3 trials between the two workers, not 3 each.
    assert [t.number for t in trials] == list(range(TRIALS))
    assert all(t.state.is_finished() for t in trials)
    # Each trial ran once, in one worker, and both workers ran some.
    ran = [
        int(n)
        for _, stderr in outputs
        for n in re.findall(r"^trial (\d+): (?:validation|pruned)", stderr, re.M)
    ]
    assert Counter(ran) == Counter(range(TRIALS))
    pids = {int(t.user_attrs[WORKER_ATTR].rsplit(":", 1)[1]) for t in trials}
    assert pids == {worker.pid for worker in workers}
    # Workers do not draw the same values because they start from the same seed.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == TRIALS

    # Both wrote the same output directory; the last one's table has every trial.
    with (tmp_path / "runs/sweep-tiny/results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == list(range(TRIALS))
    assert {r["state"] for r in rows} <= {"complete", "complete (base)", "pruned"}
    assert [r["worker"] for r in rows] == [t.user_attrs[WORKER_ATTR] for t in trials]
    assert (tmp_path / "runs/sweep-tiny/best.yaml").is_file()
    for stdout, _ in outputs:
        assert "best config: runs/sweep-tiny/best.yaml" in stdout


@pytest.mark.parametrize(
    ("storage", "shown"),
    [("mysql://x/y", "mysql://x/y"), ("mysql://me:s3cret@x/y", "mysql://me:***@x/y")],
)
def test_another_database_is_one_error_line(tmp_path: Path, storage: str, shown: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "sweep",
            "--config",
            str(REPO / "configs/sweep-tiny.yaml"),
            "--storage",
            storage,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cleaninbox: error: ")
    assert f"unsupported study storage {shown}:" in lines[0]
    assert "s3cret" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_sql_ascii_database_holds_a_study_with_utf8_text(pg_server: PostgresServer) -> None:
    """initdb under the C locale makes SQL_ASCII databases, where psycopg hands back bytes
    unless the client asks for UTF-8: Optuna could not have read its own study back."""
    name = f"ascii_{uuid.uuid4().hex[:8]}"
    pg_server.admin(
        f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
        "TEMPLATE template0"
    )
    try:
        storage = StudyStorage(pg_server.url(name)).optuna_storage()
        study = optuna.create_study(study_name="étude", storage=storage)
        study.set_user_attr("note", "Où est ma carte ?")
        loaded = optuna.load_study(study_name="étude", storage=storage)
        assert loaded.user_attrs == {"note": "Où est ma carte ?"}
        storage.engine.dispose()
    finally:
        pg_server.drop_database(name)
