"""State store faults (issue 4, test 8): read-only database, full disk, truncated database,
a second daemon on the same state. No server change without a committed intent record, a
clear message, a non-zero exit, and the lock holds.

The read-only and full file systems are real: small tmpfs mounts made by the test (the
suite runs as root, for which file permissions alone would not make a file read-only)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.mail_fixtures import ENV, MailUser, cli, snapshot
from tests.reliability.invariant import check, seed_messages


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def state_in(workdir: Path, directory: Path) -> Path:
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["state"] = str(directory / "state.db")
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    return directory / "state.db"


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("cleaninbox: error")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_read_only_state(workdir: Path, mail_user: MailUser, small_fs: Path) -> None:
    state_in(workdir, small_fs)
    cli(workdir, "once")
    seed_messages(mail_user, 3, "ro")
    before = snapshot(mail_user)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    result = cli(workdir, "once", check=False)
    assert result.returncode == 1
    assert "read-only" in one_line(result).lower()
    assert snapshot(mail_user) == before  # nothing moved without a committed record
    subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)


def test_full_disk(workdir: Path, mail_user: MailUser, small_fs: Path) -> None:
    state_in(workdir, small_fs)
    cli(workdir, "once")
    seeds = seed_messages(mail_user, 40, "full")
    filler = small_fs / "filler"
    with filler.open("wb", buffering=0) as f:  # fill the file system
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    result = cli(workdir, "once", check=False)
    assert result.returncode == 1, result.stdout
    assert "disk is full" in result.stdout + result.stderr
    filler.unlink()  # (a WAL reader needs a little space for its shared-memory file)
    # Whatever reached the server has a committed intent record.
    db = sqlite3.connect(f"file:{small_fs / 'state.db'}?mode=ro", uri=True)
    recorded = {row[0] for row in db.execute("SELECT message_id FROM decisions")}
    db.close()
    moved = {seed.message_id for seed in seeds.values()} & set(mail_user.messages("Triage/All"))
    assert moved <= recorded, moved - recorded
    cli(workdir, "once")  # with space again: reconcile and finish
    check(mail_user, workdir, seeds, destinations={"Triage/All"})


def test_truncated_database(workdir: Path, mail_user: MailUser) -> None:
    cli(workdir, "once")
    seed_messages(mail_user, 2, "trunc")
    db = workdir / "var" / "state.db"
    data = db.read_bytes()
    for name in ("state.db-wal", "state.db-shm"):
        (workdir / "var" / name).unlink(missing_ok=True)
    db.write_bytes(data[: len(data) // 3])
    before = snapshot(mail_user)
    result = cli(workdir, "once", check=False)
    assert result.returncode == 1
    assert "corrupt" in one_line(result)
    assert snapshot(mail_user) == before


def test_second_daemon_on_the_same_state(workdir: Path, mail_user: MailUser) -> None:
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["poll_interval"] = 30
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    first = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(workdir / "cleaninbox.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=workdir,
    )
    try:
        deadline = time.monotonic() + 20
        while not (workdir / "var" / "state.db").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = cli(workdir, "once", check=False)
        assert second.returncode == 1
        assert f"in use by pid {first.pid}" in one_line(second)
        assert first.poll() is None  # the first one is unharmed
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
    assert first.returncode == 0
    assert os.path.exists(workdir / "var" / "state.db")
