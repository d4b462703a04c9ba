"""This replica's side of the account leases (the table: :mod:`daemon.store.leases`).

One round every third of the TTL, on its own thread: say we are alive, renew what we
hold, give back what is above our fair share, claim free or expired accounts up to it.
The fair share is ``ceil(accounts / live replicas)``, so with R replicas no one holds more
than that after a round, and a dead replica's accounts are claimed by the others once its
leases expire.

A lease is trusted locally only until ``start of the round that renewed it + 0.8 × TTL``
(the monotonic clock): the database extended it to ``its now() + TTL``, later than that,
so this replica stops before anyone else can start. Past that moment — frozen by SIGSTOP,
cut off from the database — :meth:`LeaseKeeper.guard` refuses every IMAP command for the
account and the store's :class:`~daemon.store.leases.Fence` refuses every write.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from daemon.errors import LeaseLostError, StateError
from daemon.metrics import Metrics
from daemon.store.database import is_database_url
from daemon.store.leases import Fence, LeaseTable

if TYPE_CHECKING:
    from daemon.config.settings import Settings
    from daemon.store.state import StateStore

log = structlog.get_logger(__name__)

#: Share of the TTL a lease is trusted for locally after the round that renewed it began.
TRUST = 0.8


def default_replica_name() -> str:
    """Host name and pid: unique among processes, readable in ``cleaninbox leases``."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class _Held:
    epoch: int
    trusted_until: float  # monotonic


class LeaseKeeper:
    """Which accounts this replica may act on, kept by rounds against the lease table.

    ``accounts`` gives the configured account names (re-read every round: SIGHUP may
    change them); ``changed`` is called after a round that gained or lost accounts, with
    (gained, lost), from the keeper's thread. ``share`` False claims every account (a
    one-shot command that needs all it was asked to touch) instead of a fair share.
    """

    def __init__(
        self,
        table: LeaseTable,
        replica: str,
        ttl: float,
        accounts: Callable[[], Sequence[str]],
        metrics: Metrics,
        *,
        changed: Callable[[set[str], set[str]], None] = lambda _gained, _lost: None,
        share: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.replica = replica
        self.ttl = ttl
        self.accounts = accounts
        self.metrics = metrics
        self.changed = changed
        self.share = share
        self.clock = clock
        self._held: dict[str, _Held] = {}
        self._mutex = threading.Lock()
        self._rounds = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.database_ok = False
        metrics.leases_held.labels(replica).set(0)
        metrics.database_up.labels(replica).set(0)

    # -- what the rest of the service asks -------------------------------------------------

    def epoch(self, account: str) -> int | None:
        """The epoch held for ``account`` while the lease is trusted, else None."""
        with self._mutex:
            held = self._held.get(account)
            if held is None or self.clock() >= held.trusted_until:
                return None
            return held.epoch

    def holds(self, account: str) -> bool:
        return self.epoch(account) is not None

    def held(self) -> set[str]:
        with self._mutex:
            now = self.clock()
            return {a for a, h in self._held.items() if now < h.trusted_until}

    def fence(self) -> Fence:
        """The store's fence for this replica (refusals counted)."""
        refused = self.metrics.fenced_writes.labels(self.replica)
        return Fence(self.replica, self.epoch, lambda _account: refused.inc())

    def guard(self, account: str) -> Callable[[str], None]:
        """An IMAP command hook: refuses to send anything for ``account`` unless held."""

        def check(command: str) -> None:
            if not self.holds(account):
                raise LeaseLostError(account, f"{command} not sent")

        return check

    # -- rounds ----------------------------------------------------------------------------

    def round(self) -> tuple[set[str], set[str]]:
        """One round; (gained, lost) accounts. Database errors are logged and counted:
        leases then run out locally on their own, and the next round tries again."""
        with self._rounds:  # the keeper's thread and a SIGHUP may both ask for one
            return self._locked_round()

    def _locked_round(self) -> tuple[set[str], set[str]]:
        started = self.clock()
        accounts = sorted(set(self.accounts()))
        try:
            gained, lost = self._round(started, accounts)
        except StateError as exc:
            self.database_ok = False
            self.metrics.database_up.labels(self.replica).set(0)
            self.metrics.lease_renew_failures.labels(self.replica).inc()
            log.error("lease_round_failed", replica=self.replica, error=str(exc))
            gained, lost = set(), self._expire_locally()
        else:
            self.database_ok = True
            self.metrics.database_up.labels(self.replica).set(1)
        self.metrics.leases_held.labels(self.replica).set(len(self.held()))
        if gained or lost:
            log.info(
                "leases_changed",
                replica=self.replica,
                gained=sorted(gained),
                lost=sorted(lost),
                held=len(self.held()),
            )
            self.changed(gained, lost)
        return gained, lost

    def _round(self, started: float, accounts: list[str]) -> tuple[set[str], set[str]]:
        live = max(1, self.table.heartbeat(self.replica, self.ttl))
        self.table.ensure(accounts)
        with self._mutex:
            mine = {a: h.epoch for a, h in self._held.items()}
        renewed = self.table.renew(self.replica, mine, self.ttl)
        trusted = started + TRUST * self.ttl
        lost = set(mine) - renewed
        if lost:
            self.metrics.leases_lost.labels(self.replica).inc(len(lost))
        removed = renewed - set(accounts)  # no longer configured: give back
        target = len(accounts) if not self.share else math.ceil(len(accounts) / live)
        keep = sorted(renewed - removed)
        surplus = keep[target:] if len(keep) > target else []
        give_back = removed | set(surplus)
        self.table.release(self.replica, give_back)
        with self._mutex:
            for account in lost | give_back:
                self._held.pop(account, None)
            for account in renewed - give_back:
                if account in self._held:  # stop() may have emptied it meanwhile
                    self._held[account].trusted_until = trusted
        want = target - len(renewed - give_back)
        claimed = self.table.claim(self.replica, accounts, want, self.ttl)
        with self._mutex:
            for c in claimed:
                self._held[c.account] = _Held(c.epoch, trusted)
        for c in claimed:
            if c.previous is not None and c.previous != self.replica:
                self.metrics.lease_takeovers.labels(self.replica).inc()
                log.info("lease_taken_over", account=c.account, previous=c.previous)
        self.metrics.accounts_unheld.labels(self.replica).set(
            self.table.unheld(accounts, 2 * self.ttl)
        )
        return {c.account for c in claimed}, lost | give_back

    def _expire_locally(self) -> set[str]:
        """Leases past their local trust, dropped (the database could not be asked)."""
        now = self.clock()
        with self._mutex:
            gone = {a for a, h in self._held.items() if now >= h.trusted_until}
            for account in gone:
                del self._held[account]
        if gone:
            self.metrics.leases_lost.labels(self.replica).inc(len(gone))
        return gone

    def acquire(self, account: str, stop: threading.Event | None = None) -> None:
        """For a one-shot command: hold ``account`` or raise :class:`LeaseLostError`. A
        replica that died (or a command that was killed) holds it until its lease expires,
        so this waits up to one TTL; a live replica keeps renewing, and the error names it."""
        deadline = self.clock() + self.ttl * 1.2
        while not self.holds(account):
            if self.clock() > deadline or (stop is not None and stop.is_set()):
                owner = next((r.owner for r in self.table.all() if r.account == account), None)
                raise LeaseLostError(account, f"held by replica {owner or 'unknown'}")
            log.info("waiting_for_lease", account=account, up_to_seconds=self.ttl)
            time.sleep(self.ttl / 6)
            self.round()

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        """A first round now (so the service starts with its share), then one every
        third of the TTL on a thread."""
        self.round()
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.round()
            except Exception:  # a bug must not stop the renewals silently
                log.exception("lease_round_crashed", replica=self.replica)

    def stop(self) -> None:
        """Stop renewing and give every lease back (SIGTERM), so others take over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        with self._mutex:
            mine, self._held = set(self._held), {}
        try:
            self.table.release(self.replica, mine)
            self.table.leave(self.replica)
        except StateError as exc:  # they expire on their own
            log.warning("lease_release_failed", replica=self.replica, error=str(exc))
        self.metrics.leases_held.labels(self.replica).set(0)
        if mine:
            log.info("leases_released", replica=self.replica, accounts=sorted(mine))


@contextmanager
def leases_for(
    store: StateStore, settings: Settings, accounts: Iterable[str], metrics: Metrics
) -> Iterator[LeaseKeeper | None]:
    """A one-shot command's leases (``undo``): on a PostgreSQL state, hold every account it
    will touch, with the store fenced on them, and give them back afterwards; on SQLite
    (one writer by its lock file) nothing to do."""
    if not is_database_url(settings.state):
        yield None
        return
    wanted = sorted(set(accounts))
    keeper = LeaseKeeper(
        LeaseTable(store.database),
        settings.replica or default_replica_name(),
        settings.lease_ttl,
        lambda: wanted,
        metrics,
        share=False,
    )
    store.fence = keeper.fence()
    keeper.start()
    try:
        for account in wanted:
            keeper.acquire(account)
        yield keeper
    finally:
        keeper.stop()
        store.fence = None
