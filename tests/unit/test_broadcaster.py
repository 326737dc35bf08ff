"""The broadcaster: a slow subscriber's queue is bounded and told to catch up from the
database; closing it ends every subscription."""

from __future__ import annotations

import uuid

from deepmemory_service.models import JobEvent
from deepmemory_service.runs.broadcaster import Broadcaster


async def test_a_slow_subscriber_is_bounded_and_told_to_catch_up() -> None:
    broadcaster = Broadcaster(queue_size=4)
    job = uuid.uuid4()
    slow = broadcaster.subscribe(job)
    fast = broadcaster.subscribe(job)
    for i in range(1, 4):
        broadcaster.publish(JobEvent(i, job, "progress", {"done": i}))
    assert (await fast.next()).id == 1  # type: ignore[union-attr]
    for i in range(4, 1000):
        broadcaster.publish(JobEvent(i, job, "progress", {"done": i}))
        while not fast.queue.empty():
            fast.queue.get_nowait()
    assert slow.queue.qsize() <= 4
    assert await slow.next() is None  # lagged: catch up from the database
    assert broadcaster.lagged >= 1
    slow.close()
    fast.close()
    assert broadcaster.subscriber_count == 0
    assert not broadcaster.has_subscribers(job)


async def test_close_all_ends_every_subscription() -> None:
    broadcaster = Broadcaster()
    sub = broadcaster.subscribe(uuid.uuid4())
    broadcaster.close_all()
    assert await sub.next() is None
    assert sub.closed
