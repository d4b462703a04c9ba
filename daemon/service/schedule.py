"""When a polled account's cycles fire: on a fixed grid, with jitter that never
accumulates.

APScheduler's own interval trigger adds its jitter to the previous (already jittered)
fire time, so with ``poll_interval`` 60 s and ``jitter`` 5 s an account polls every 62.5 s
on average and the phases of many accounts drift into clumps that queue on the worker
pool. :class:`Grid` fires at ``start + k * interval`` plus a fresh random delay in
``[0, jitter)`` each time: the period is exactly the interval, two cycles are never more
than interval + jitter apart, and accounts spread over the interval stay spread.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

from apscheduler.triggers.base import BaseTrigger


class Grid(BaseTrigger):  # type: ignore[misc]  # APScheduler 3 ships no type hints
    """Fire times ``start + k * interval + U(0, jitter)`` for k = 0, 1, 2, ...

    After a fire at any time (on the grid, or moved by ``modify_job``, e.g. a backoff),
    the next is the following grid slot. ``jitter`` is capped at half the interval so
    that a jittered fire still belongs to its own slot.
    """

    def __init__(self, interval: float, start: datetime, jitter: float = 0.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.start = start
        self.jitter = max(0.0, min(jitter, interval / 2))

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        since = now if previous_fire_time is None else previous_fire_time
        elapsed = (since - self.start).total_seconds()
        if previous_fire_time is None:
            slot = max(0, math.ceil(elapsed / self.interval))
        else:
            slot = max(0, math.floor(elapsed / self.interval) + 1)
        delay = random.uniform(0, self.jitter) if self.jitter else 0.0
        return self.start + timedelta(seconds=slot * self.interval + delay)

    def __str__(self) -> str:
        return f"grid[{self.interval:g} s from {self.start.isoformat()}, jitter {self.jitter:g} s]"
