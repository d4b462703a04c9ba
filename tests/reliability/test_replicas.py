"""Replicas on one PostgreSQL state against a real Dovecot: they share the accounts, a
SIGKILLed replica's accounts are taken over after its leases expire, and every message
ends up filed exactly once (the invariant, per account).

CI runs 6 accounts; the full size of the issue (60 accounts, the Dovecot pool's limit) is
``CLEANINBOX_TEST_REPLICA_ACCOUNTS=60 pytest tests/reliability/test_replicas.py`` run
alone."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

from tests.dovecot import Dovecot
from tests.mail_fixtures import MailUser, take_user
from tests.postgres import PostgresServer
from tests.processes import wait_for
from tests.reliability.replicas import TTL, build, holders
from tests.scaffold import dovecot_account

ACCOUNTS = int(os.environ.get("CLEANINBOX_TEST_REPLICA_ACCOUNTS", "6"))
REPLICAS = 3


def test_replicas_share_accounts_and_take_over_a_killed_one(
    dovecot: Dovecot, pg_server: PostgresServer, tiny_bundle: Path, tmp_path: Path
) -> None:
    users = [take_user(dovecot) for _ in range(ACCOUNTS)]
    url = pg_server.url(pg_server.create_database())

    def account(_i: int, u: MailUser) -> dict[str, object]:
        return dovecot_account(dovecot, u.name, name=u.name, tls="implicit", folders=["INBOX"])

    cluster = build(tmp_path, tiny_bundle, url, users, account, replicas=REPLICAS)
    try:
        cluster.launch_all()
        cluster.wait_started()
        cluster.wait_spread(0, math.ceil(ACCOUNTS / REPLICAS) + 1)
        cluster.seed(3, "before")
        time.sleep(0.5)
        victim = cluster.daemon(0)
        orphans = {a for a, owner in holders(url).items() if owner == "r0"}
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        cluster.daemons[0] = None
        killed = time.monotonic()
        cluster.seed(2, "after")
        wait_for(
            lambda: all(holders(url).get(a) in ("r1", "r2") for a in orphans),
            6 * TTL,
            "the killed replica's accounts taken over",
        )
        print(f"takeover of {len(orphans)} account(s) after {time.monotonic() - killed:.1f} s")
        cluster.wait_filed()
    finally:
        statuses = cluster.stop_all()
    assert statuses == [0, 0]
    cluster.check_exactly_once()
