"""The metrics' cached count (runs by status): read again only once its interval is over,
whatever the scrape rate (`GET /metrics` itself: service/test_metrics.py)."""

from __future__ import annotations

from deepmemory_service.platform.metrics import Cached


async def test_the_count_is_read_again_once_the_interval_is_over() -> None:
    reads = iter([{"generated": 1}, {"generated": 1, "completed": 1}])

    async def read() -> dict[str, int]:
        return next(reads)

    fresh = Cached(read, ttl_s=3600)
    assert await fresh.get() == await fresh.get() == {"generated": 1}
    assert fresh.reads == 1
    stale = Cached(read, ttl_s=0)
    assert await stale.get() == {"generated": 1, "completed": 1}
