"""One retry policy for every call that may fail for a while: the database, the LLM, the
embeddings API and Activeloop's REST client.

A `RetryPolicy` is capped exponential backoff (`base_s * 2**attempt`, at most `max_s`),
with full jitter when many callers may retry together (the LLM's and the embeddings API's
clients) and without it where one caller waits alone (the database, a blocking thread). A
server's `Retry-After` is a floor, honoured up to the cap. `retry` runs a step under a
policy; callers that cannot await (a thread inside deeplake) use `delay` alone.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from attrs import frozen

T = TypeVar("T")
_RNG = random.Random()  # noqa: S311  # jitter, not secrets


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@frozen
class RetryPolicy:
    attempts: int
    """Tries in all, the first one included."""
    base_s: float
    max_s: float
    jitter: bool = True

    def delay(
        self, attempt: int, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> float:
        """The pause after failed try number `attempt` (0 for the first)."""
        ceiling = min(self.max_s, self.base_s * 2**attempt)
        pause = (rng or _RNG).uniform(0, ceiling) if self.jitter else ceiling
        if retry_after_s is not None:
            pause = max(pause, min(retry_after_s, self.max_s))
        return pause


async def retry(
    step: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retry_on: Callable[[BaseException], bool],
    pause: Callable[[BaseException, int], float] | None = None,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
) -> T:
    """`step()`, tried again after a pause while it fails with an error `retry_on` accepts,
    at most `policy.attempts` times in all; the last error is raised as it is.

    `pause(error, attempt)` replaces the policy's delay (a server's Retry-After, or none when
    a rate budget already makes the caller wait); `on_retry(error, attempt, delay)` logs.
    """
    for attempt in range(policy.attempts):
        try:
            return await step()
        except Exception as exc:
            if not retry_on(exc) or attempt == policy.attempts - 1:
                raise
            delay = pause(exc, attempt) if pause is not None else policy.delay(attempt)
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            if delay > 0:
                await asyncio.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")
