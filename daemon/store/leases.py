"""Accounts leased across replicas that share a PostgreSQL state.

A lease row per account says who holds it (``owner``), under which ``epoch`` and until when
(``expires_at``, the database's clock, so replicas' clocks never need to agree). A claim
takes only rows that are free (no owner, or expired) and raises their epoch; renewing
extends only rows the replica still holds under the same epoch. Claims select with
``FOR UPDATE SKIP LOCKED``: replicas claiming at the same moment never wait on each other
and never take the same row, since a row one of them has locked is skipped by the others.
(Advisory locks would also exclude, but they belong to a session rather than a row: they
vanish with a broken connection instead of expiring on a clock everyone can read, and
they cannot be listed with their owner and epoch, as ``cleaninbox leases`` does.)

**Fencing.** Every state write for an account (the write-ahead intent, its completion,
folder positions, corrections) runs :meth:`Fence.check` in its own transaction: it reads
the account's lease row ``FOR SHARE`` and refuses the write unless this replica holds it
under the epoch it believes it holds, unexpired. The share lock keeps a takeover (which
needs the row ``FOR UPDATE``) from slipping in before that transaction commits.

These statements use PostgreSQL's own SQL (``now()``, intervals, ``SKIP LOCKED``): a
SQLite state has one writer by its lock file and no leases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from daemon.errors import LeaseLostError
from daemon.store.database import Database


@dataclass(frozen=True)
class Claimed:
    account: str
    epoch: int
    previous: str | None  # the owner before (None: never held, or released)


@dataclass(frozen=True)
class LeaseRow:
    """One account's lease as ``cleaninbox leases`` shows it."""

    account: str
    owner: str | None
    epoch: int
    expires_at: datetime
    seconds_left: float  # negative: expired that long ago


_ENSURE = sa.text(
    "INSERT INTO leases(account, owner, epoch, expires_at) "
    "SELECT a, NULL, 0, now() FROM unnest(CAST(:accounts AS text[])) AS a "
    "ON CONFLICT (account) DO NOTHING"
)
_HEARTBEAT = sa.text(
    "INSERT INTO replicas(replica, seen_at) VALUES (:replica, now()) "
    "ON CONFLICT (replica) DO UPDATE SET seen_at = excluded.seen_at"
)
_LIVE = sa.text("SELECT count(*) FROM replicas WHERE seen_at > now() - make_interval(secs => :ttl)")
_RENEW = sa.text(
    "UPDATE leases SET expires_at = now() + make_interval(secs => :ttl) "
    "WHERE owner = :replica AND account = ANY(CAST(:accounts AS text[])) "
    "AND expires_at > now() RETURNING account, epoch"
)
_CLAIM = sa.text(
    "WITH free AS ("
    "  SELECT account, owner FROM leases"
    "  WHERE account = ANY(CAST(:accounts AS text[]))"
    "    AND (owner IS NULL OR expires_at <= now())"
    "  ORDER BY expires_at, account LIMIT :want FOR UPDATE SKIP LOCKED) "
    "UPDATE leases AS l SET owner = :replica, epoch = l.epoch + 1, "
    "  expires_at = now() + make_interval(secs => :ttl) "
    "FROM free WHERE l.account = free.account "
    "RETURNING l.account, l.epoch, free.owner AS previous"
)
_RELEASE = sa.text(
    "UPDATE leases SET owner = NULL, expires_at = now() "
    "WHERE owner = :replica AND account = ANY(CAST(:accounts AS text[]))"
)
_CHECK = sa.text(
    "SELECT l.account FROM leases AS l "
    "JOIN unnest(CAST(:accounts AS text[]), CAST(:epochs AS bigint[])) AS w(account, epoch) "
    "ON l.account = w.account AND l.epoch = w.epoch "
    "WHERE l.owner = :replica AND l.expires_at > now() FOR SHARE OF l"
)
_UNHELD = sa.text(
    "SELECT count(*) FROM leases WHERE account = ANY(CAST(:accounts AS text[])) "
    "AND expires_at < now() - make_interval(secs => :age)"
)
_ALL = sa.text(
    "SELECT account, owner, epoch, expires_at, "
    "EXTRACT(EPOCH FROM expires_at - now())::float8 AS seconds_left "
    "FROM leases ORDER BY account"
)


class LeaseTable:
    """The lease and replica tables of one PostgreSQL state."""

    def __init__(self, database: Database) -> None:
        if database.engine.dialect.name != "postgresql":
            raise ValueError("leases need a PostgreSQL state")
        self.database = database

    def heartbeat(self, replica: str, ttl: float) -> int:
        """Say this replica is alive; the number of replicas alive (seen within ``ttl``)."""
        with self.database.transaction(journal=False) as conn:
            conn.execute(_HEARTBEAT, {"replica": replica})
            return int(conn.execute(_LIVE, {"ttl": ttl}).scalar_one())

    def leave(self, replica: str) -> None:
        with self.database.transaction(journal=False) as conn:
            conn.execute(sa.text("DELETE FROM replicas WHERE replica = :r"), {"r": replica})

    def ensure(self, accounts: Sequence[str]) -> None:
        """A lease row for every account (free, epoch 0) where there is none yet."""
        with self.database.transaction(journal=False) as conn:
            conn.execute(_ENSURE, {"accounts": list(accounts)})

    def renew(self, replica: str, held: dict[str, int], ttl: float) -> set[str]:
        """Extend the leases still held under the same epoch; the accounts renewed."""
        if not held:
            return set()
        with self.database.transaction(journal=False) as conn:
            rows = conn.execute(
                _RENEW, {"replica": replica, "accounts": sorted(held), "ttl": ttl}
            ).all()
        return {account for account, epoch in rows if held.get(account) == epoch}

    def claim(self, replica: str, accounts: Sequence[str], want: int, ttl: float) -> list[Claimed]:
        """Take up to ``want`` free or expired leases among ``accounts``."""
        if want <= 0 or not accounts:
            return []
        with self.database.transaction(journal=False) as conn:
            rows = conn.execute(
                _CLAIM,
                {"replica": replica, "accounts": list(accounts), "want": want, "ttl": ttl},
            ).all()
        return [Claimed(str(a), int(e), None if p is None else str(p)) for a, e, p in rows]

    def release(self, replica: str, accounts: Iterable[str]) -> None:
        """Give leases back at once (shutdown, rebalance, an account removed)."""
        names = sorted(accounts)
        if names:
            with self.database.transaction(journal=False) as conn:
                conn.execute(_RELEASE, {"replica": replica, "accounts": names})

    def unheld(self, accounts: Sequence[str], longer_than: float) -> int:
        """How many of ``accounts`` nobody has held for more than ``longer_than`` seconds."""
        rows = self.database.rows(_UNHELD.bindparams(accounts=list(accounts), age=longer_than))
        return int(next(iter(rows[0].values()))) if rows else 0

    def all(self) -> list[LeaseRow]:
        return [LeaseRow(**row) for row in self.database.rows(_ALL)]

    @contextmanager
    def only_one(self, job: str) -> Iterator[bool]:
        """True inside the block for one process at a time across replicas (a session
        advisory lock on ``job``); False for the others, who should skip the job."""
        with self.database.engine.connect() as conn:
            taken = bool(
                conn.execute(
                    sa.text("SELECT pg_try_advisory_lock(hashtext(:job))"), {"job": job}
                ).scalar_one()
            )
            conn.commit()
            try:
                yield taken
            finally:
                if taken:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:job))"), {"job": job})
                    conn.commit()


class Fence:
    """Refuses a state write for an account this replica does not hold (see module doc).

    ``epoch`` says which epoch the replica believes it holds for an account (None: not
    held); ``refused`` is told about every refusal (the metric)."""

    def __init__(
        self,
        replica: str,
        epoch: Callable[[str], int | None],
        refused: Callable[[str], None] = lambda _account: None,
    ) -> None:
        self.replica = replica
        self.epoch = epoch
        self.refused = refused

    def check(self, conn: sa.Connection, accounts: Iterable[str]) -> dict[str, int]:
        """In the write's transaction: the epoch of each account, or :class:`LeaseLostError`."""
        epochs: dict[str, int] = {}
        for account in sorted(set(accounts)):
            epoch = self.epoch(account)
            if epoch is None:
                self.refused(account)
                raise LeaseLostError(account, "not held here")
            epochs[account] = epoch
        if not epochs:
            return epochs
        held = {
            row[0]
            for row in conn.execute(
                _CHECK,
                {
                    "accounts": list(epochs),
                    "epochs": list(epochs.values()),
                    "replica": self.replica,
                },
            )
        }
        for account in epochs:
            if account not in held:
                self.refused(account)
                raise LeaseLostError(account, "expired or taken over; the write was refused")
        return epochs
