"""Log-once bookkeeping: has this key been seen within the last period?"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable


class OncePer:
    """``first(*key)`` is True the first time a key is seen, then False until ``period`` seconds
    have passed (``math.inf``: never again). At most ``max_keys`` keys are remembered (the oldest
    is forgotten first), so keys that come from the network cannot grow memory without bound."""

    def __init__(
        self, period: float = math.inf, max_keys: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.period = period
        self.max_keys = max_keys
        self._clock = clock
        self._seen: dict[Hashable, float] = {}

    def first(self, *key: Hashable) -> bool:
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last < self.period:
            return False
        self._seen.pop(key, None)
        if len(self._seen) >= self.max_keys:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = now
        return True
