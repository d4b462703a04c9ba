"""How long to wait before trying again after repeated failures."""

from __future__ import annotations

import random


def backoff_delay(failures: int, base: float, cap: float, *, max_doublings: int = 10) -> float:
    """``base`` doubled per failure after the first, at most ``cap``, with ±20 % jitter so
    that accounts failing together (a server restart) do not retry in step."""
    delay = min(cap, base * 2.0 ** min(max(failures, 1) - 1, max_doublings))
    return delay * random.uniform(0.8, 1.2)
