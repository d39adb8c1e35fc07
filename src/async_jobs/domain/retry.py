"""Backoff between attempts: how long a failed job waits before it may run again.

One value type, ``Backoff``, covers the three shapes (constant, linear, exponential), each
with a cap and jitter. It is a pure function of the attempt number and a random source, so
tests can pin the jitter, and it round-trips through JSON so that a job can carry its own.

    Backoff.exponential(base_seconds=1, cap_seconds=300)   # 1, 2, 4, 8 ... s, full jitter
    Backoff.linear(step_seconds=10, cap_seconds=120)         # 10, 20, 30 ... s
    Backoff.constant(5)                                      # 5 s each time
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
from collections.abc import Callable, Mapping
from typing import Any

from async_jobs.domain.errors import InvalidJobError

MAX_BACKOFF_SECONDS = 366 * 24 * 3600.0


class BackoffKind(enum.StrEnum):
    CONSTANT = "constant"  # base
    LINEAR = "linear"  # base * attempt
    EXPONENTIAL = "exponential"  # base * factor ** (attempt - 1)


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """The wait before the attempt after ``attempt`` (1 = after the first failure).

    ``jitter`` is the share of the wait that is random: 0 waits exactly the computed time,
    1 waits anywhere between 0 and it ("full jitter"). Jitter spreads retries of jobs that
    failed together (a database blip) over a window instead of sending them back in a herd.
    """

    kind: BackoffKind = BackoffKind.EXPONENTIAL
    base_seconds: float = 1.0
    factor: float = 2.0
    cap_seconds: float = 300.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        _check_range("base_seconds", self.base_seconds, 0, MAX_BACKOFF_SECONDS)
        _check_range("cap_seconds", self.cap_seconds, 0, MAX_BACKOFF_SECONDS)
        _check_range("factor", self.factor, 1, 100)
        _check_range("jitter", self.jitter, 0, 1)

    @classmethod
    def constant(cls, seconds: float, *, jitter: float = 0.1) -> Backoff:
        return cls(BackoffKind.CONSTANT, seconds, 1.0, max(seconds, 0.0), jitter)

    @classmethod
    def linear(
        cls, step_seconds: float, *, cap_seconds: float = 300.0, jitter: float = 0.5
    ) -> Backoff:
        return cls(BackoffKind.LINEAR, step_seconds, 1.0, cap_seconds, jitter)

    @classmethod
    def exponential(
        cls,
        base_seconds: float = 1.0,
        *,
        factor: float = 2.0,
        cap_seconds: float = 300.0,
        jitter: float = 1.0,
    ) -> Backoff:
        return cls(BackoffKind.EXPONENTIAL, base_seconds, factor, cap_seconds, jitter)

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The least and the most ``delay(attempt)`` can return."""
        attempt = max(attempt, 1)
        if self.kind is BackoffKind.CONSTANT:
            raw = self.base_seconds
        elif self.kind is BackoffKind.LINEAR:
            raw = self.base_seconds * attempt
        else:
            # Compare in logarithms so that attempt 1000 does not overflow a float.
            grows = self.base_seconds > 0 and self.factor > 1
            exponent = attempt - 1
            huge = grows and exponent * math.log(self.factor) > math.log(MAX_BACKOFF_SECONDS)
            raw = MAX_BACKOFF_SECONDS if huge else self.base_seconds * self.factor**exponent
        high = min(self.cap_seconds, raw)
        return high * (1.0 - self.jitter), high

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        low, high = self.bounds(attempt)
        return high - (high - low) * rand()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "base_seconds": self.base_seconds,
            "factor": self.factor,
            "cap_seconds": self.cap_seconds,
            "jitter": self.jitter,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Backoff:
        """Parse a backoff given over HTTP or stored in a job; bad input is an
        ``InvalidJobError`` naming the field."""
        if not isinstance(data, Mapping):
            raise InvalidJobError("backoff must be an object", field="backoff")
        unknown = set(data) - {"kind", "base_seconds", "factor", "cap_seconds", "jitter"}
        if unknown:
            raise InvalidJobError(
                f"backoff has unknown fields: {', '.join(sorted(map(str, unknown)))}",
                field="backoff",
            )
        try:
            kind = BackoffKind(data.get("kind", BackoffKind.EXPONENTIAL))
        except ValueError:
            kinds = ", ".join(k.value for k in BackoffKind)
            raise InvalidJobError(f"backoff.kind must be one of {kinds}", field="backoff") from None
        defaults = _DEFAULTS[kind]
        values = {name: data.get(name, default) for name, default in defaults.items()}
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidJobError(f"backoff.{name} must be a number", field="backoff")
        if kind is BackoffKind.CONSTANT and "cap_seconds" not in data:
            values["cap_seconds"] = max(float(values["base_seconds"]), 0.0)
        return cls(kind, **{k: float(v) for k, v in values.items()})


_DEFAULTS: dict[BackoffKind, dict[str, float]] = {
    BackoffKind.CONSTANT: {"base_seconds": 1.0, "factor": 1.0, "cap_seconds": 1.0, "jitter": 0.1},
    BackoffKind.LINEAR: {"base_seconds": 1.0, "factor": 1.0, "cap_seconds": 300.0, "jitter": 0.5},
    BackoffKind.EXPONENTIAL: {
        "base_seconds": 1.0,
        "factor": 2.0,
        "cap_seconds": 300.0,
        "jitter": 1.0,
    },
}


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):  # also refuses NaN
        raise InvalidJobError(
            f"backoff.{name} must be between {low:g} and {high:g}", field="backoff"
        )


DEFAULT_BACKOFF = Backoff.exponential()
