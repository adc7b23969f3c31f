"""When to try a request again, and how long to wait first.

Every operation of the service is a pure function of its request: nothing is stored, so
sending a request twice cannot do harm, and the client may retry any of them. It does so on
the statuses in `RetryPolicy.statuses` (503: not ready yet, or at capacity) and on connection
errors and timeouts, waiting what `Retry-After` asks for when the service sends it, else an
exponential backoff with jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # tries in all, the first included; 1 turns retries off
    backoff_s: float = 0.25  # the first wait without Retry-After; doubles every try
    max_wait_s: float = 30.0  # no wait is longer, Retry-After included
    statuses: frozenset[int] = frozenset({503})

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def wait_after_response(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before the next try, or None: do not retry. `attempt` counts
        from 1 (the try that just ended)."""
        if response.status_code not in self.statuses or attempt >= self.attempts:
            return None
        asked = retry_after_seconds(response.headers.get("Retry-After"))
        return min(asked if asked is not None else self._backoff(attempt), self.max_wait_s)

    def wait_after_error(self, attempt: int, error: httpx.TransportError) -> float | None:
        if attempt >= self.attempts:
            return None
        return min(self._backoff(attempt), self.max_wait_s)

    def _backoff(self, attempt: int) -> float:
        # Jitter spreads the retries of many clients that failed at the same moment.
        return self.backoff_s * 2.0 ** (attempt - 1) * random.uniform(0.5, 1.0)


NO_RETRIES = RetryPolicy(attempts=1)


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After: 3` or `Retry-After: <HTTP date>` -> seconds from now (None if absent or
    unreadable)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
