"""Backoff between attempts: how long a failed job waits before it may run again.

Pure functions of the attempt number and a random source, so tests can pin the jitter.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable


@dataclasses.dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """``base * factor ** (attempt - 1)`` seconds, capped, with "full jitter" below it.

    Full jitter spreads retries of jobs that failed together (a database blip) over the
    whole window instead of sending them back in one herd.
    """

    base_seconds: float = 1.0
    factor: float = 2.0
    cap_seconds: float = 300.0
    jitter: float = 1.0  # 0: no jitter; 1: anywhere in [0, delay]

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        raw = min(self.cap_seconds, self.base_seconds * self.factor ** max(attempt - 1, 0))
        return raw * (1.0 - self.jitter * rand())


DEFAULT_BACKOFF = ExponentialBackoff()
