"""Account leases across replicas on a real PostgreSQL: fair shares, takeover after expiry,
release on stop, fencing of writes and commands, and what a lost database does."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.errors import LeaseLostError, StateError
from daemon.metrics import Metrics
from daemon.service.leases import LeaseKeeper
from daemon.store.database import IDLE_IN_TRANSACTION_TIMEOUT, set_write_hook
from daemon.store.leases import LeaseTable
from daemon.store.state import StateStore
from tests.processes import wait_for
from tests.test_state import decision

ACCOUNTS = [f"acct{i:02d}" for i in range(10)]
TTL = 1.5


class Clock:
    """A monotonic clock the test moves by hand (the database keeps its own time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stores(pg_url: str) -> Iterator[list[StateStore]]:
    opened = [StateStore(pg_url) for _ in range(3)]
    yield opened
    for store in opened:
        store.close()


def keeper(
    store: StateStore,
    name: str,
    *,
    clock: Clock | None = None,
    accounts: list[str] = ACCOUNTS,
    ttl: float = TTL,
) -> LeaseKeeper:
    made = LeaseKeeper(
        LeaseTable(store.database),
        name,
        ttl,
        lambda: accounts,
        Metrics(CollectorRegistry()),
        share=True,
        clock=clock or time.monotonic,
    )
    store.fence = made.fence()
    return made


def value(k: LeaseKeeper, metric: str) -> float:
    sample = k.metrics.registry.get_sample_value(metric, {"replica": k.replica})
    return sample or 0.0


def test_replicas_share_the_accounts_fairly(stores: list[StateStore]) -> None:
    a, b, c = (keeper(s, n) for s, n in zip(stores, "abc", strict=True))
    a.round()
    assert a.held() == set(ACCOUNTS)  # alone: everything
    b.round()  # b is alive now; a gives back its surplus at its next round
    a.round()
    b.round()
    assert len(a.held()) == len(b.held()) == 5 and not a.held() & b.held()
    c.round()
    for k in (a, b, c, a, b, c):
        k.round()
    held = [k.held() for k in (a, b, c)]
    assert set().union(*held) == set(ACCOUNTS)
    assert sum(len(h) for h in held) == len(ACCOUNTS)  # nobody twice
    assert max(len(h) for h in held) <= math.ceil(len(ACCOUNTS) / 3)


def test_a_dead_replicas_accounts_are_taken_over_after_the_ttl(
    stores: list[StateStore],
) -> None:
    a, b = keeper(stores[0], "a"), keeper(stores[1], "b")
    a.round()
    b.round()
    assert b.held() == set()  # all held and unexpired: nothing to take
    time.sleep(TTL + 0.2)  # a dies: it renews no more
    b.round()
    assert b.held() == set(ACCOUNTS)
    assert value(b, "cleaninbox_lease_takeovers_total") == len(ACCOUNTS)
    rows = {row.account: row for row in b.table.all()}
    assert {row.owner for row in rows.values()} == {"b"}
    assert {row.epoch for row in rows.values()} == {2}  # a's claim was 1


def test_stop_gives_the_leases_back_at_once(stores: list[StateStore]) -> None:
    a, b = keeper(stores[0], "a"), keeper(stores[1], "b")
    a.round()
    a.stop()
    b.round()  # no TTL to wait for
    assert b.held() == set(ACCOUNTS)
    assert value(b, "cleaninbox_lease_takeovers_total") == 0  # released, not taken over


def test_writes_for_an_account_held_elsewhere_are_refused(stores: list[StateStore]) -> None:
    """The fence: a replica whose lease was taken over (it was frozen) writes nothing."""
    clock = Clock()
    a = keeper(stores[0], "a", clock=clock, accounts=["a"])
    b = keeper(stores[1], "b", accounts=["a"])
    a.round()
    (first,) = stores[0].record([decision(1, account="a")])
    time.sleep(TTL + 0.2)
    b.round()  # b takes "a" over; a's process does not know yet (frozen, or cut off)
    assert b.holds("a")
    with pytest.raises(LeaseLostError, match="expired or taken over"):
        stores[0].record([decision(2, account="a")])
    with pytest.raises(LeaseLostError):
        stores[0].finish([first], "done")
    with pytest.raises(LeaseLostError):
        stores[0].set_folder("a", "INBOX", 7, 99)
    assert value(a, "cleaninbox_fenced_writes_total") == 3
    assert [d.uid for d in stores[1].history()] == [1]  # nothing of a's got in
    assert stores[1].get(first).status == "pending"  # b settles it against the server
    stores[1].finish([first], "done")  # b may


def test_the_epoch_is_journaled_with_the_intent(stores: list[StateStore]) -> None:
    a = keeper(stores[0], "a", accounts=["a"])
    a.round()
    stores[0].record([decision(1, account="a")])
    with stores[0].database.engine.connect() as conn:
        epoch = conn.exec_driver_sql("SELECT lease_epoch FROM decisions").scalar_one()
    assert epoch == a.epoch("a") == 1


def test_commands_stop_when_the_lease_is_no_longer_trusted(stores: list[StateStore]) -> None:
    """Frozen past its lease (SIGSTOP, a long pause): on waking, the replica's own clock
    says the lease is past trust, so the guard refuses the next IMAP command at once."""
    clock = Clock()
    a = keeper(stores[0], "a", clock=clock, accounts=["a"])
    a.round()
    guard = a.guard("a")
    guard("UID MOVE")  # trusted: allowed
    clock.now += 0.8 * TTL  # past trust, before the database's expiry
    with pytest.raises(LeaseLostError, match="UID MOVE not sent"):
        guard("UID MOVE")
    with pytest.raises(LeaseLostError, match="not held here"):
        stores[0].record([decision(1, account="a")])  # and the fence agrees, locally


def test_an_unreachable_database_stops_the_replica(stores: list[StateStore]) -> None:
    clock = Clock()
    a = keeper(stores[0], "a", clock=clock, accounts=["a"])
    a.round()
    assert value(a, "cleaninbox_database_up") == 1
    stores[0].database.engine.dispose()
    stores[0].database.engine = __import__("sqlalchemy").create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/none"
    )
    a.round()  # cannot renew: counted, and the lease still runs out on the local clock
    assert value(a, "cleaninbox_database_up") == 0
    assert value(a, "cleaninbox_lease_renew_failures_total") == 1
    assert a.holds("a")
    clock.now += TTL
    a.round()
    assert not a.holds("a")
    assert value(a, "cleaninbox_leases_lost_total") == 1


def test_only_one_replica_runs_a_shared_job(stores: list[StateStore]) -> None:
    first, second = LeaseTable(stores[0].database), LeaseTable(stores[1].database)
    with first.only_one("retrain") as mine:
        assert mine
        with second.only_one("retrain") as theirs:
            assert not theirs
    with second.only_one("retrain") as now_mine:
        assert now_mine


def test_leases_command_lists_who_holds_what(
    stores: list[StateStore], pg_url: str, tmp_path: Path
) -> None:
    import json

    import yaml

    from tests.scaffold import cli

    a = keeper(stores[0], "replica-a", accounts=["x", "y"], ttl=60)
    a.round()
    accounts = [
        {"name": n, "host": "h.invalid", "username": "u", "password_env": "PW"} for n in "xz"
    ]
    (tmp_path / "cleaninbox.yaml").write_text(
        yaml.safe_dump({"state": pg_url, "accounts": accounts})
    )
    rows = [json.loads(line) for line in cli(tmp_path, "leases", "--json").stdout.splitlines()]
    by = {r["account"]: r for r in rows}
    assert by["x"]["owner"] == "replica-a" and by["x"]["epoch"] == 1 and by["x"]["configured"]
    assert by["y"]["configured"] is False
    text = cli(tmp_path, "leases").stdout
    assert "held by replica-a" in text and "(not in these settings)" in text
    a.stop()
    assert "unheld for" in cli(tmp_path, "leases").stdout
    assert "z" in text and "no lease yet" in text
    (tmp_path / "cleaninbox.yaml").write_text(yaml.safe_dump({"state": "s.db"}))
    refused = cli(tmp_path, "leases", check=False)
    assert refused.returncode == 2 and "one daemon holds every account" in refused.stderr


def test_a_replica_paused_inside_a_write_does_not_keep_its_accounts(
    stores: list[StateStore],
) -> None:
    """Paused (SIGSTOP, a frozen VM) in the middle of a fenced write, a replica holds its
    lease row FOR SHARE, and claims skip locked rows: without a bound, no other replica
    could take the account over while it stays paused. PostgreSQL ends the idle
    transaction, the account is taken over after its TTL, and the paused write, woken,
    is refused and leaves nothing behind."""
    a = keeper(stores[0], "a", accounts=["a"])
    b = keeper(stores[1], "b", accounts=["a"])
    a.round()
    inside, wake = threading.Event(), threading.Event()

    def pause(_write: int) -> None:  # the write's statements are sent; its commit is next
        inside.set()
        wake.wait(60)

    failed: list[BaseException] = []

    def write() -> None:
        try:
            stores[0].record([decision(1, account="a")])
        except BaseException as exc:  # handed to the test's thread
            failed.append(exc)

    set_write_hook(pause)
    writer = threading.Thread(target=write)
    try:
        writer.start()
        assert inside.wait(10)
        paused = time.monotonic()
        wait_for(
            lambda: "a" in b.round()[0],
            TTL + IDLE_IN_TRANSACTION_TIMEOUT + 10,
            "b to take over the account of a replica paused inside a write",
        )
        assert time.monotonic() - paused >= TTL - 0.2  # not before the lease ran out
    finally:
        set_write_hook(None)
        wake.set()
        writer.join(30)
    assert len(failed) == 1 and isinstance(failed[0], StateError), failed
    assert stores[1].history() == []
