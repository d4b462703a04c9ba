"""Replicas on one PostgreSQL state under faults, as real processes against the suite's
Dovecot and PostgreSQL: a replica frozen past its leases, the database restarted and one
replica's link to it cut, a rolling restart, accounts added and removed by SIGHUP. Every
test ends with the exactly-once invariant per account (nothing lost, nothing duplicated,
nothing pending, a rerun acts on nothing, every lease given back).

The figures measured (takeover seconds, the longest an account went unheld) are printed:
run with ``-s`` to see them.
"""

from __future__ import annotations

import functools
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from daemon.store.leases import LeaseRow
from tests.dovecot import Dovecot, free_port
from tests.mail_fixtures import MailUser, take_user
from tests.postgres import PostgresServer
from tests.processes import wait_for
from tests.proxy import Chunk, Proxy
from tests.reliability.invariant import locate, seed_messages, snapshot_all
from tests.reliability.replicas import (
    TTL,
    LeaseSampler,
    Replicas,
    build,
    holders,
    leases,
    logged_at,
    metrics,
    readyz,
)
from tests.scaffold import dovecot_account, proxied_account

ACCOUNTS = 5  # on 3 replicas: a fair share is 2, so every replica holds 1 or 2
LEASE_METRICS = (
    "cleaninbox_lease_takeovers_total",
    "cleaninbox_leases_lost_total",
    "cleaninbox_lease_renew_failures_total",
    "cleaninbox_fenced_writes_total",
)
LOGIN = re.compile(rb"^\S+ LOGIN \"?([^\s\"]+)", re.MULTILINE)


def direct(_i: int, u: MailUser, server: Dovecot) -> dict[str, Any]:
    return dovecot_account(server, u.name, name=u.name, tls="implicit", folders=["INBOX"])


def http_on(ports: list[int]) -> Callable[[int], dict[str, Any]]:
    """Replica i's settings for HTTP (/metrics, /readyz) on ``ports[i]``."""
    return lambda i: {"http": {"enabled": True, "listen": f"127.0.0.1:{ports[i]}"}}


def owned_by(url: str, replica: str) -> set[str]:
    return {a for a, owner in holders(url).items() if owner == replica}


def held_by_others(url: str, accounts: set[str], replica: str) -> bool:
    """Every one of ``accounts`` held, by a replica other than ``replica``."""
    held = holders(url)
    return all(held.get(a) not in (None, replica) for a in accounts)


def lease(url: str, account: str) -> LeaseRow:
    return next(row for row in leases(url) if row.account == account)


def logged(cluster: Replicas, event: str, account: str, after: float = 0.0) -> list[int]:
    """The replicas that logged ``event`` about ``account`` (by its ``account`` field, or in
    its added/removed/gained lists) after ``after`` (``time.time()``)."""

    def about(e: dict[str, Any]) -> bool:
        lists = (e.get(key) or [] for key in ("added", "removed", "gained"))
        return e.get("account") == account or any(account in names for names in lists)

    return [
        i
        for i in range(len(cluster.workdirs))
        if any(
            e.get("event") == event and about(e) and logged_at(e) > after for e in cluster.events(i)
        )
    ]


def print_lease_metrics(ports: list[int]) -> None:
    for i, port in enumerate(ports):
        sample = metrics(port)
        figures = ", ".join(f"{name[11:]} {sample.get(name, 0):g}" for name in LEASE_METRICS)
        print(f"r{i}: {figures}")


def test_rolling_restart_then_accounts_dir_reload(
    dovecot: Dovecot, pg_server: PostgresServer, tiny_bundle: Path, tmp_path: Path
) -> None:
    """SIGTERM and restart each replica in turn while mail arrives: no account goes
    unheld for a TTL. Then an account file added to ``accounts_dir`` and SIGHUP: exactly
    one replica picks it up; the file removed and SIGHUP: its lease is released and
    nobody cycles it any more."""
    users = [take_user(dovecot) for _ in range(ACCOUNTS + 1)]
    extra = users.pop()  # the account the accounts_dir part adds and removes
    url = pg_server.url(pg_server.create_database())
    accounts_dir = tmp_path / "accounts.d"
    accounts_dir.mkdir()
    cluster = build(
        tmp_path,
        tiny_bundle,
        url,
        users,
        lambda i, u: direct(i, u, dovecot),
        options=lambda _i: {"accounts_dir": str(accounts_dir)},
    )
    try:
        cluster.launch_all()
        cluster.wait_started()
        cluster.seed(2, "start")
        handovers = []
        with LeaseSampler(url, set(cluster.names)) as sampler:
            for i in range(len(cluster.workdirs)):
                cluster.wait_spread(1, 2)  # the replica about to go holds some accounts
                cluster.seed(1, f"roll{i}")
                held = owned_by(url, f"r{i}")
                began = time.monotonic()
                cluster.daemon(i).process.terminate()
                wait_for(
                    functools.partial(held_by_others, url, held, f"r{i}"),
                    2 * TTL,
                    f"r{i}'s accounts handed over",
                )
                handovers.append(time.monotonic() - began)
                assert cluster.reap(i) == 0
                cluster.launch(i)
                print(
                    f"r{i}: {len(held)} account(s) handed over {handovers[-1]:.1f} s after "
                    f"SIGTERM; running again after {time.monotonic() - began:.1f} s"
                )
            cluster.wait_filed()
            time.sleep(2 * sampler.period)  # a last look after the last restart
        print(
            f"rolling restart: longest unheld {sampler.unheld_max:.2f} s ({sampler.worst or '-'})"
            f" over {sampler.samples} samples"
        )
        assert sampler.unheld_max < TTL
        assert max(handovers) < TTL  # given back on SIGTERM, not left to expire

        # An account file appears: every replica reloads, exactly one takes the account.
        (accounts_dir / "extra.yaml").write_text(yaml.safe_dump(direct(0, extra, dovecot)))
        added = time.time()
        cluster.signal_all(signal.SIGHUP)
        cluster.users.append(extra)
        with LeaseSampler(url, {extra.name}, period=0.1) as sampler:
            wait_for(
                lambda: len(logged(cluster, "accounts_reloaded", extra.name, added)) == 3,
                15,
                "every replica to reload its accounts",
            )
            wait_for(lambda: holders(url).get(extra.name) is not None, 10, "the new account held")
            cluster.seed(2, "added", [extra])
            cluster.wait_filed(users=[extra])
        owners = [o for o in sampler.owners.get(extra.name, []) if o is not None]
        starters = logged(cluster, "account_started", extra.name, added)
        print(
            f"accounts_dir: {extra.name} held by {owners}, started by {[f'r{i}' for i in starters]}"
        )
        assert len(starters) == 1
        assert owners == [f"r{starters[0]}"]

        # The file goes: its holder gives the lease back, and no replica cycles it again.
        (accounts_dir / "extra.yaml").unlink()
        removed = time.time()
        cluster.signal_all(signal.SIGHUP)
        wait_for(
            lambda: len(logged(cluster, "accounts_reloaded", extra.name, removed)) == 3,
            15,
            "every replica to reload its accounts",
        )
        wait_for(lambda: lease(url, extra.name).owner is None, 10, "the lease released")
        released = lease(url, extra.name)
        settled = time.time()
        late = seed_messages(extra, 1, f"removed-{extra.name}")
        time.sleep(3.0)  # three poll intervals
        where = {name: [c[0] for c in locate(extra).get(name, [])] for name in late}
        assert all(folders == ["INBOX"] for folders in where.values()), where
        assert logged(cluster, "cycle", extra.name, settled) == []
        assert lease(url, extra.name).owner is None
        assert lease(url, extra.name).epoch == released.epoch  # nobody claimed it again
    finally:
        statuses = cluster.stop_all()
    assert statuses == [0, 0, 0]
    cluster.check_exactly_once()


def login_user(chunks: list[Chunk]) -> str | None:
    """The user a connection logged in as (plain-text LOGIN), if it did."""
    for chunk in chunks:
        found = LOGIN.search(chunk.data)
        if found:
            return found.group(1).decode()
    return None


@pytest.fixture
def imap_proxies(dovecot: Dovecot) -> Iterator[list[Proxy]]:
    """One proxy to Dovecot per replica: what each replica sent, and when."""
    proxies = [Proxy(dovecot.port) for _ in range(3)]
    yield proxies
    for proxy in proxies:
        proxy.close()


def test_frozen_replica_sends_nothing_for_accounts_taken_over(
    dovecot: Dovecot,
    pg_server: PostgresServer,
    tiny_bundle: Path,
    tmp_path: Path,
    imap_proxies: list[Proxy],
) -> None:
    """SIGSTOP a replica just as it sends a UID MOVE, for two TTLs, while mail arrives:
    the others take its accounts over and settle its pending move; after SIGCONT it sends
    no IMAP command for those accounts (read from its own proxy's wire) unless it has
    claimed one again since; every message is filed exactly once."""
    users = [take_user(dovecot) for _ in range(ACCOUNTS)]
    url = pg_server.url(pg_server.create_database())
    proxies = imap_proxies
    ports = [free_port() for _ in range(3)]

    def account(i: int, u: MailUser) -> dict[str, Any]:
        return proxied_account(proxies[i], u.name, name=u.name, folders=["INBOX"])

    cluster = build(tmp_path, tiny_bundle, url, users, account, options=http_on(ports))
    victim = None
    try:
        cluster.launch_all()
        cluster.wait_started()
        cluster.wait_spread(1, 2)
        victim = cluster.daemon(0)
        frozen = threading.Event()
        frozen_at: list[float] = []

        def freeze() -> None:  # in the proxy, before the UID MOVE goes to the server
            victim.process.send_signal(signal.SIGSTOP)
            frozen_at.append(time.time())
            frozen.set()

        proxies[0].before = freeze
        proxies[0].cut_on = b"UID MOVE"
        cluster.seed(2, "before")
        assert frozen.wait(30), "r0 never moved a message"
        orphans = owned_by(url, "r0")
        assert orphans
        cluster.seed(2, "frozen")  # mail keeps arriving while r0 is frozen
        wait_for(  # within a TTL and a claim round; generous for a loaded CI machine
            lambda: all(holders(url).get(a) in ("r1", "r2") for a in orphans),
            10 * TTL,
            "the frozen replica's accounts taken over",
        )
        took = time.time() - frozen_at[0]
        time.sleep(max(0.0, frozen_at[0] + 2 * TTL - time.time()))
        resumed = time.time()
        victim.process.send_signal(signal.SIGCONT)
        print(
            f"frozen {resumed - frozen_at[0]:.1f} s: {len(orphans)} account(s) "
            f"taken over after {took:.1f} s"
        )
        cluster.seed(1, "resumed")
        cluster.wait_filed()
        cluster.wait_spread(1, 2)  # r0 has rejoined and holds a share again
        time.sleep(TTL)  # and has had its chance to act on what it believed it held
        print_lease_metrics(ports)
    finally:
        if victim is not None:
            victim.process.send_signal(signal.SIGCONT)
        statuses = cluster.stop_all()
    assert statuses == [0, 0, 0]
    unleased = sent_without_lease(proxies[0], orphans, resumed, cluster.events(0))
    cluster.check_exactly_once()  # its rerun goes through r0's proxy too: read that first
    assert not unleased, "r0 sent after resuming, for accounts it no longer held:\n" + "\n".join(
        unleased
    )


def sent_without_lease(
    proxy: Proxy, orphans: set[str], resumed: float, events: list[dict[str, Any]]
) -> list[str]:
    """What a resumed replica sent (through ``proxy``) after ``resumed`` for an account in
    ``orphans`` on a connection it had not opened after claiming that account again (its
    ``leases_changed`` log line): one line per connection, naming the commands."""
    regained = {
        account: min(
            (
                logged_at(e)
                for e in events
                if e.get("event") == "leases_changed"
                and account in (e.get("gained") or [])
                and logged_at(e) > resumed
            ),
            default=None,
        )
        for account in orphans
    }
    late_connections = 0
    found = []
    for number, chunks in proxy.connection_chunks().items():
        user = login_user(chunks)
        late = [c for c in chunks if c.at > resumed]
        if user not in orphans or not late:
            continue
        late_connections += 1
        claimed = regained[user]
        if claimed is None or chunks[0].at < claimed:
            commands = [line for c in late for line in c.data.decode(errors="replace").splitlines()]
            opened = "before" if chunks[0].at < resumed else "after"
            found.append(f"{user}, connection {number} (opened {opened} the resume): {commands}")
    again = sorted(a for a, at in regained.items() if at is not None)
    print(
        f"wire after resume: {late_connections} connection(s) for the taken-over accounts "
        f"carried bytes; claimed again since: {again or 'none'}; without a lease: {len(found)}"
    )
    return found


@pytest.fixture
def pg_link(pg_server: PostgresServer) -> Iterator[Proxy]:
    """A proxy in front of the session's PostgreSQL, to cut one replica's link; afterwards
    the server is running again, whatever the test did to it (other tests share it)."""
    link = Proxy(pg_server.port)
    yield link
    link.close()
    ensure_up(pg_server)


def test_database_restart_and_cut_link(
    dovecot: Dovecot,
    pg_server: PostgresServer,
    tiny_bundle: Path,
    tmp_path: Path,
    pg_link: Proxy,
) -> None:
    """PostgreSQL restarted mid-run (down longer than a TTL): every replica reports it
    (/readyz 503), acts on nothing meanwhile, and resumes when it is back. Then one
    replica's link to it cut by a proxy: that replica reports it, the others take its
    accounts over, and it takes its share back once the link returns. Nothing lost or
    duplicated."""
    users = [take_user(dovecot) for _ in range(ACCOUNTS)]
    database = pg_server.create_database()
    url = pg_server.url(database)
    link = pg_link
    ports = [free_port() for _ in range(3)]
    cluster = build(
        tmp_path,
        tiny_bundle,
        url,
        users,
        lambda i, u: direct(i, u, dovecot),
        state=lambda i: (
            f"postgresql://postgres@127.0.0.1:{link.port}/{database}" if i == 2 else url
        ),
        options=http_on(ports),
    )
    try:
        cluster.launch_all()
        cluster.wait_started()
        cluster.wait_spread(1, 2)
        cluster.seed(1, "start")
        cluster.wait_filed()

        # The whole database goes for longer than a lease.
        pg_server.stop("fast")
        down = time.monotonic()
        cluster.seed(2, "db-down")
        before = [snapshot_all(u) for u in users]
        wait_for(lambda: all(unready(port) for port in ports), 2 * TTL, "every replica unready")
        time.sleep(max(0.0, down + TTL + 1.0 - time.monotonic()))
        assert [snapshot_all(u) for u in users] == before, "acted while the database was down"
        pg_server.start()
        back = time.monotonic()
        cluster.wait_started(30)
        print(
            f"database down {back - down:.1f} s; every account held again "
            f"{time.monotonic() - back:.1f} s after it came back"
        )
        cluster.wait_filed()
        wait_for(lambda: all(readyz(p)[0] == 200 for p in ports), 20, "every replica ready")
        cluster.wait_spread(1, 2)

        # One replica's link to the database is cut.
        stranded = owned_by(url, "r2")
        assert stranded
        link.cut()
        cut = time.time()
        cluster.seed(2, "cut")
        wait_for(lambda: unready(ports[2]), 2 * TTL, "r2 unready")
        assert metrics(ports[2])["cleaninbox_database_up"] == 0
        wait_for(
            lambda: all(holders(url).get(a) in ("r0", "r1") for a in stranded),
            4 * TTL,
            "r2's accounts taken over",
        )
        print(f"link cut: {len(stranded)} account(s) taken over after {time.time() - cut:.1f} s")
        cluster.wait_filed()
        stood_down(cluster.events(2), cut, time.time())
        link.restore()
        restored = time.time()
        wait_for(lambda: readyz(ports[2])[0] == 200, 20, "r2 ready again")
        cluster.wait_spread(1, 2)
        print(f"link restored: r2 holds its share again after {time.time() - restored:.1f} s")
        cluster.seed(1, "restored")
        cluster.wait_filed()
        print_lease_metrics(ports)
    finally:
        ensure_up(pg_server)
        statuses = cluster.stop_all()
    assert statuses == [0, 0, 0]
    cluster.check_exactly_once()


def stood_down(events: list[dict[str, Any]], since: float, until: float) -> None:
    """A replica cut off from the database from ``since`` to ``until`` (its log lines):
    once its leases ran out locally it attempted no cycle, and it kept trying the database
    at the lease rounds' pace (a TTL / 3), not in a tight loop."""
    during = [e for e in events if since < logged_at(e) < until]
    dropped = next(
        logged_at(e) for e in during if e.get("event") == "leases_changed" and e.get("lost")
    )
    cycles = [e for e in during if e.get("event") in ("cycle", "cycle_failed", "decision")]
    after = [e for e in cycles if logged_at(e) > dropped]
    rounds = sum(e.get("event") == "lease_round_failed" for e in during)
    print(
        f"cut off {until - since:.1f} s: leases dropped after {dropped - since:.1f} s, "
        f"{len(cycles) - len(after)} cycle(s) tried before, {rounds} failed lease rounds"
    )
    assert after == [], f"cycles after its leases ran out: {after}"
    assert 0 < rounds <= (until - since) / (TTL / 3) + 1


def unready(port: int) -> bool:
    status, problems = readyz(port)
    return status == 503 and "state database unreachable" in problems


def ensure_up(server: PostgresServer) -> None:
    """The session's PostgreSQL running again, whatever happened (other tests share it)."""
    try:
        server.admin("SELECT 1")
    except psycopg.OperationalError:
        server.start()
