"""Replicas of ``cleaninbox run`` as real processes on one PostgreSQL state, against the
suite's Dovecot: what tests/reliability/test_replicas.py and test_replica_faults.py build
around them, written once.

:func:`build` writes one working directory per replica (``r0``, ``r1``...; the replica's
name is also its ``CLEANINBOX_REPLICA``); :class:`Replicas` starts and stops them, seeds
mail, waits for it to be filed and checks the exactly-once invariant per account
(tests/reliability/invariant.py). :class:`LeaseSampler` reads the lease table every few
tenths of a second, for how long an account went unheld and who held it when.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from daemon.store.leases import LeaseRow, LeaseTable
from daemon.store.state import StateStore
from tests.mail_fixtures import MailUser
from tests.processes import wait_for
from tests.reliability.invariant import (
    Findings,
    Seed,
    examine,
    journal,
    seed_messages,
    snapshot_all,
)
from tests.scaffold import NEVER_ABSTAIN, Daemon, cli, launch_daemon
from tests.scaffold import write_settings as write

TTL = 3.0  # the shortest lease the settings accept: takeovers within seconds
DESTINATION = "Triage/All"  # where tests.scaffold.RULES files every message

AccountFor = Callable[[int, MailUser], dict[str, Any]]


def leases(url: str) -> list[LeaseRow]:
    with StateStore(url, read_only=True) as store:
        return LeaseTable(store.database).all()


def holders(url: str) -> dict[str, str | None]:
    """Account -> the replica holding an unexpired lease on it (None: nobody)."""
    return {row.account: row.owner if row.seconds_left > 0 else None for row in leases(url)}


def started(url: str, names: Iterable[str]) -> bool:
    """Every account held and past its first cycle (its INBOX position recorded)."""
    time.sleep(0.2)
    with StateStore(url, read_only=True) as store:
        if any(store.folder(name, "INBOX") is None for name in names):
            return False
    held = holders(url)
    return all(held.get(name) for name in names)


def logged_at(event: dict[str, Any]) -> float:
    """A JSON log line's time (structlog's ISO UTC stamp) as ``time.time()`` seconds."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def metrics(port: int) -> dict[str, float]:
    """A replica's ``/metrics`` samples by name (the lease metrics carry one label, the
    replica's own name, so the name alone is unambiguous for them)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def readyz(port: int) -> tuple[int, list[str]]:
    """A replica's ``/readyz``: the status code and the problems it names."""
    response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    return response.status_code, list(response.json()["problems"])


@dataclass
class Replicas:
    """The replicas' working directories, their processes and the mail seeded so far."""

    url: str  # the state as the test reads it (a replica may reach it through a proxy)
    users: list[MailUser]
    workdirs: list[Path]
    daemons: list[Daemon | None] = field(default_factory=list)
    seeds: dict[str, dict[str, Seed]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.users]

    def replica(self, i: int) -> str:
        return f"r{i}"

    def launch(self, i: int, *, wait: bool = True) -> Daemon:
        """Start replica ``i`` (its earlier logs kept as daemon.log.N); with ``wait``, until
        it has run its first lease round and logged ``started``."""
        log = self.workdirs[i] / "daemon.log"
        if log.exists():
            rotated = len(list(self.workdirs[i].glob("daemon.log.*")))
            log.rename(log.with_name(f"daemon.log.{rotated + 1}"))
        daemon = launch_daemon(self.workdirs[i], env={"CLEANINBOX_REPLICA": self.replica(i)})
        while len(self.daemons) <= i:
            self.daemons.append(None)
        self.daemons[i] = daemon
        if wait:
            self.wait_running(i)
        return daemon

    def wait_running(self, i: int, timeout: float = 60) -> None:
        daemon = self.daemon(i)
        wait_for(
            lambda: (
                daemon.process.poll() is not None
                or any(e.get("event") == "started" for e in daemon.events())
            ),
            timeout,
            f"replica {self.replica(i)} to start",
        )
        assert daemon.process.poll() is None, daemon.log()[-3000:]

    def launch_all(self) -> None:
        """Start every replica at once, then wait for each (they start in parallel)."""
        for i in range(len(self.workdirs)):
            self.launch(i, wait=False)
        for i in range(len(self.workdirs)):
            self.wait_running(i)

    def signal_all(self, signum: int) -> None:
        for daemon in self.daemons:
            if daemon is not None:
                daemon.process.send_signal(signum)

    def daemon(self, i: int) -> Daemon:
        daemon = self.daemons[i]
        assert daemon is not None, f"replica {self.replica(i)} is not running"
        return daemon

    def terminate(self, i: int) -> int:
        """SIGTERM replica ``i`` and wait for it; its exit status."""
        status = self.daemon(i).stop()
        self.daemons[i] = None
        return status

    def reap(self, i: int, timeout: float = 30) -> int:
        """Wait for replica ``i``, already signalled, to exit; its exit status. (A second
        SIGTERM could land while the interpreter shuts down, after its handlers are gone.)"""
        status = self.daemon(i).process.wait(timeout)
        self.daemons[i] = None
        return status

    def stop_all(self) -> list[int]:
        """SIGTERM every running replica; their exit statuses."""
        return [self.terminate(i) for i, d in enumerate(self.daemons) if d is not None]

    def events(self, i: int) -> list[dict[str, Any]]:
        """Replica ``i``'s JSON log lines across its restarts, oldest first."""
        logs = sorted(self.workdirs[i].glob("daemon.log.*"), key=lambda p: int(p.suffix[1:]))
        out: list[dict[str, Any]] = []
        for path in [*logs, self.workdirs[i] / "daemon.log"]:
            if path.exists():
                lines = path.read_text().splitlines()
                out += [json.loads(line) for line in lines if line.startswith("{")]
        return out

    def wait_started(self, timeout: float = 60) -> None:
        wait_for(lambda: started(self.url, self.names), timeout, "every account held and started")

    def wait_spread(self, low: int, high: int, timeout: float = 30) -> None:
        """Until every running replica holds between ``low`` and ``high`` accounts."""

        def spread() -> bool:
            owners = list(holders(self.url).values())
            running = [self.replica(i) for i, d in enumerate(self.daemons) if d is not None]
            return all(low <= owners.count(r) <= high for r in running)

        wait_for(spread, timeout, f"every replica holding {low} to {high} accounts")

    def seed(self, count: int, tag: str, users: Iterable[MailUser] | None = None) -> None:
        """Append ``count`` messages to each user's INBOX (all users by default)."""
        for u in self.users if users is None else users:
            self.seeds.setdefault(u.name, {}).update(seed_messages(u, count, f"{tag}-{u.name}"))

    def findings(self, user: MailUser) -> Findings:
        return examine(
            user,
            self.workdirs[0],
            self.seeds.get(user.name, {}),
            destinations={DESTINATION},
            account=user.name,
        )

    def filed(self, users: Iterable[MailUser] | None = None) -> bool:
        time.sleep(0.5)  # each look reads every mailbox
        return all(not self.findings(u).problems for u in self.users if users is None or u in users)

    def wait_filed(self, timeout: float = 90, users: Iterable[MailUser] | None = None) -> float:
        chosen = None if users is None else list(users)
        return wait_for(lambda: self.filed(chosen), timeout, "every seeded message filed")

    def check_exactly_once(self, users: Iterable[MailUser] | None = None) -> None:
        """After the replicas stopped: every seed filed once (none lost, none duplicated),
        nothing pending, every intent journaled under a lease, a rerun acts on nothing
        and every lease was given back."""
        chosen = self.users if users is None else list(users)
        counts: dict[str, int] = {}
        for u in chosen:
            found = self.findings(u)
            for kind, n in found.counts.items():
                counts[kind] = counts.get(kind, 0) + n
            assert not found.problems, f"{u.name}: " + "\n".join(found.problems[:20])
        seeded = sum(len(self.seeds.get(u.name, {})) for u in chosen)
        print(f"invariant: {seeded} messages, lost 0, duplicated 0 ({counts or 'no findings'})")
        rows, pending = journal(self.workdirs[0])
        assert pending == 0
        assert all(row["lease_epoch"] for row in rows)  # every intent journaled under a lease
        before = [snapshot_all(u) for u in chosen]
        cli(self.workdirs[0], "once")  # a rerun acts on nothing
        assert [snapshot_all(u) for u in chosen] == before
        assert len(journal(self.workdirs[0])[0]) == len(rows)
        assert all(owner is None for owner in holders(self.url).values())  # released


def build(
    tmp_path: Path,
    bundle: Path,
    url: str,
    users: list[MailUser],
    account: AccountFor,
    *,
    replicas: int = 3,
    state: Callable[[int], str] | None = None,
    options: Callable[[int], dict[str, Any]] | None = None,
) -> Replicas:
    """Working directories for ``replicas`` replicas of the same accounts (``account(i,
    user)``: replica i's settings for ``user``, named after the user), polling every
    second on the lease TTL :data:`TTL`. ``state(i)``: the URL replica i uses (default
    ``url``); ``options(i)``: more of its settings (e.g. ``http``)."""
    StateStore(url).close()  # the schema, so the test can look before a replica starts
    workdirs = []
    for i in range(replicas):
        workdir = tmp_path / f"r{i}"
        workdir.mkdir()
        write(
            workdir,
            bundle,
            [account(i, u) for u in users],
            state=state(i) if state is not None else url,
            lease_ttl=TTL,
            poll_interval=1,
            jitter=0,
            log_format="json",
            classifier=NEVER_ABSTAIN,
            **(options(i) if options is not None else {}),
        )
        workdirs.append(workdir)
    return Replicas(url, users, workdirs)


@dataclass
class LeaseSampler:
    """Reads the lease table every ``period`` seconds on a thread, from start to stop.

    ``unheld_max`` is the longest any watched account was seen without an unexpired lease:
    the table says how long (a released row's ``expires_at`` is the release, an expired
    one's its expiry), so the figure is exact up to one period. ``owners`` keeps each
    account's successive holders."""

    url: str
    watched: set[str]
    period: float = 0.3
    unheld_max: float = 0.0
    worst: str = ""
    samples: int = 0
    owners: dict[str, list[str | None]] = field(default_factory=dict)
    failure: Exception | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _mutex: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> LeaseSampler:
        self._thread = threading.Thread(target=self._run, name="lease-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        assert self.failure is None, f"the lease table could not be read: {self.failure}"

    def watch(self, accounts: Iterable[str]) -> None:
        with self._mutex:
            self.watched = set(accounts)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                rows = leases(self.url)
            except Exception as exc:  # reported by __exit__: no silent gap in the samples
                self.failure = exc
                return
            with self._mutex:
                watched = set(self.watched)
            self.samples += 1
            for row in rows:
                if row.account not in watched:
                    continue
                held = row.owner is not None and row.seconds_left > 0
                history = self.owners.setdefault(row.account, [])
                owner = row.owner if held else None
                if not history or history[-1] != owner:
                    history.append(owner)
                if not held and -row.seconds_left > self.unheld_max:
                    self.unheld_max = -row.seconds_left
                    self.worst = row.account
