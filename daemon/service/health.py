"""What ``/readyz`` reports: each account's last good cycle and what went wrong since.

Kept apart from the web app (:mod:`daemon.service.http`), which is imported only when
``http.enabled``: a ``cleaninbox once`` does not pay for FastAPI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Health:
    """What /readyz reports: set by the service after every cycle."""

    intervals: dict[str, float] = field(default_factory=dict)  # account -> seconds
    last_ok: dict[str, float] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)
    needs_person: dict[str, str] = field(default_factory=dict)  # e.g. a revoked token
    started: float = field(default_factory=time.time)

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
        out = [f"{account}: {error}" for account, error in self.needs_person.items()]
        for account, interval in self.intervals.items():
            if account in self.needs_person:
                continue
            last = self.last_ok.get(account)
            limit = 3 * interval
            if last is None:
                if now - self.started > limit:
                    error = self.last_error.get(account, "no cycle has finished yet")
                    out.append(f"{account}: no successful cycle in {limit:g} s ({error})")
            elif now - last > limit:
                error = self.last_error.get(account, "no cycle finished since")
                out.append(f"{account}: last successful cycle {now - last:.0f} s ago ({error})")
        return out
