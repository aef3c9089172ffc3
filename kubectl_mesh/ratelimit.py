"""A token bucket: at most `rate` takes a second, `capacity` at once. Pure: the caller passes the clock.

Shared by the proxy's tap (events shown per second) and the webhook's namespace GETs (per worker),
so both count the same way.
"""

from __future__ import annotations


class TokenBucket:
    """Full at the start; a take costs one token; tokens come back at `rate` a second."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._stamp = now

    def take(self, now: float) -> bool:
        """One token if there is one (True); else False and nothing taken."""
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def give_back(self) -> None:
        """A token taken for something that did not happen after all."""
        self._tokens = min(self.capacity, self._tokens + 1)
