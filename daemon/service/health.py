"""What ``/readyz`` reports: each account's last good cycle and what went wrong since.

Kept apart from the web app (:mod:`daemon.service.http`), which is imported only when
``http.enabled``: a ``cleaninbox once`` does not pay for FastAPI.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Health:
    """What /readyz reports: set by the service after every cycle."""

    intervals: dict[str, float] = field(default_factory=dict)  # account -> seconds
    last_ok: dict[str, float] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)
    needs_person: dict[str, str] = field(default_factory=dict)  # e.g. a revoked token
    started_at: dict[str, float] = field(default_factory=dict)  # when tracking began
    started: float = field(default_factory=time.time)
    #: Service-wide checks (e.g. the state database); each returns a problem or None.
    checks: list[Callable[[], str | None]] = field(default_factory=list)
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def track(self, account: str, interval: float) -> None:
        """Start expecting cycles of ``account`` (it became this replica's)."""
        with self._mutex:
            self.intervals[account] = interval
            self.started_at[account] = time.time()

    def forget(self, account: str) -> None:
        """Stop expecting cycles of ``account`` (removed, or held by another replica)."""
        with self._mutex:
            for table in (self.intervals, self.last_ok, self.last_error, self.needs_person):
                table.pop(account, None)
            self.started_at.pop(account, None)

    def ok(self, account: str) -> None:
        self.last_ok[account] = time.time()
        self.last_error.pop(account, None)
        self.needs_person.pop(account, None)

    def failed(self, account: str, error: str, *, needs_person: bool = False) -> None:
        """A failed cycle. ``needs_person``: waiting will not help (credentials refused),
        so /readyz reports it at once instead of after three missed intervals."""
        self.last_error[account] = error
        if needs_person:
            self.needs_person[account] = error
        else:
            self.needs_person.pop(account, None)

    def problems(self, now: float | None = None) -> list[str]:
        now = now or time.time()
        out = [problem for check in self.checks if (problem := check()) is not None]
        with self._mutex:
            needs_person = dict(self.needs_person)
            intervals = dict(self.intervals)
        out += [f"{account}: {error}" for account, error in needs_person.items()]
        for account, interval in intervals.items():
            if account in needs_person:
                continue
            last = self.last_ok.get(account)
            limit = 3 * interval
            if last is None:
                if now - self.started_at.get(account, self.started) > limit:
                    error = self.last_error.get(account, "no cycle has finished yet")
                    out.append(f"{account}: no successful cycle in {limit:g} s ({error})")
            elif now - last > limit:
                error = self.last_error.get(account, "no cycle finished since")
                out.append(f"{account}: last successful cycle {now - last:.0f} s ago ({error})")
        return out
