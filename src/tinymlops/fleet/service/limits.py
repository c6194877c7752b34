"""Rate limits on failed authentication and enrolment: token buckets per client address and per presented token.

Guessing credentials costs a failure each; after :data:`BURST` failures a client (or a token) gets 429 with
``Retry-After`` until the bucket refills at :data:`REFILL_PER_S`. Successful calls cost nothing, so a gateway
enrolling a whole fleet from one address is not slowed down. Buckets live per server worker (in memory).
"""

from __future__ import annotations

import math
import time

from fastapi import HTTPException

BURST = 20.0
REFILL_PER_S = 1.0
MAX_KEYS = 100_000


class FailureLimiter:
    """Token buckets of allowed failures, keyed by client address or token hash."""

    def __init__(self, burst: float = BURST, refill_per_s: float = REFILL_PER_S) -> None:
        self.burst, self.rate = burst, refill_per_s
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def check(self, *keys: str) -> None:
        """Raise 429 (with Retry-After) if any key has no failures left."""
        now = time.monotonic()
        for key in keys:
            tokens = self._tokens(key, now)
            if tokens < 1.0:
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise HTTPException(429, f"too many failed attempts; retry in {wait} s",
                                    headers={"Retry-After": str(wait)})

    def fail(self, *keys: str) -> None:
        """Spend one failure of each key."""
        now = time.monotonic()
        if len(self._buckets) > MAX_KEYS:
            self._buckets.clear()
        for key in keys:
            self._buckets[key] = (self._tokens(key, now) - 1.0, now)
