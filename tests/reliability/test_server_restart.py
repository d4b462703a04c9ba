"""Dovecot killed mid-batch and restarted after 5 s and after 60 s (issue 4, test 3): the
running daemon backs off, resumes, and does not crash or loop; the invariant holds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dovecot import Dovecot, free_port, running_dovecot
from tests.mail_fixtures import USERS, MailUser
from tests.proxy import Proxy
from tests.reliability.invariant import check, seed_messages
from tests.scaffold import edited_settings, launch_daemon


@pytest.fixture(scope="module")
def restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    with running_dovecot(tmp_path_factory.mktemp("dovecot-restart"), USERS[:4]) as server:
        yield server


def metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name):
            return float(line.rpartition(" ")[2])
    return 0.0


@pytest.mark.parametrize("down_for", [5, 60])
def test_dovecot_killed_mid_batch(down_for: int, workdir: Path, restartable: Dovecot) -> None:
    user = MailUser(USERS[0 if down_for == 5 else 1], restartable)
    port = free_port()
    proxy = Proxy(restartable.port)
    with edited_settings(workdir) as settings:
        settings.update(
            poll_interval=1, backoff_max=8, http={"enabled": True, "listen": f"127.0.0.1:{port}"}
        )
        settings["accounts"][0].update(
            host="127.0.0.1",
            port=proxy.port,
            tls="none",
            allow_plaintext=True,
            username=user.name,
            batch_size=5,
        )
    base = f"http://127.0.0.1:{port}"
    daemon = launch_daemon(workdir)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if metric(base, "cleaninbox_last_successful_cycle_timestamp_seconds") > 0:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        restarted = threading.Event()

        def crash_and_restart() -> None:
            restartable.kill()
            time.sleep(down_for)
            restartable.start()
            restarted.set()

        proxy.cut_on, proxy.on_match = b"UID MOVE", crash_and_restart  # mid-batch
        seeds = seed_messages(user, 30, f"restart-{down_for}")
        assert restarted.wait(down_for + 30), "the daemon never reached UID MOVE"
        # Dovecot may first wait out the locks its killed processes left behind.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(user.messages("Triage/All")) == len(seeds):
                break
            time.sleep(0.5)
        assert daemon.process.poll() is None, "the daemon died"
        assert metric(base, "cleaninbox_connection_up") == 1
    finally:
        code = daemon.stop()
        proxy.close()
    assert code == 0
    failures = [e for e in daemon.events() if e["event"] == "cycle_failed"]
    assert failures, "the outage was not noticed"
    # Backing off (1, 2, 4, 8, 8... s) rather than looping: a handful of attempts.
    assert len(failures) <= down_for // 4 + 6, len(failures)
    assert all("retry_in_seconds" in e for e in failures)
    check(user, workdir, seeds, destinations={"Triage/All"})
