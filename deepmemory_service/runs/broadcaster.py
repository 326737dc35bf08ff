"""In-process fan-out of job events to SSE subscribers, with bounded queues.

A subscriber that falls behind is not allowed to grow memory: when its queue is full it
is flagged `lagging` and its queue emptied; the stream then catches up from the stored
events (the database is the source of truth for replay) and goes on live.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from types import TracebackType

import attrs

from deepmemory_service.models import JobEvent


@attrs.define(eq=False)
class Subscription:
    job_id: uuid.UUID
    queue: asyncio.Queue[JobEvent]
    _broadcaster: Broadcaster
    lagging: bool = False
    # set when the service shuts down: the stream ends cleanly
    closed: bool = False
    _wake: asyncio.Event = attrs.field(factory=asyncio.Event)

    async def next(self) -> JobEvent | None:
        """The next live event; None when the subscriber lagged (catch up) or was closed."""
        while True:
            if self.closed:
                return None
            if self.lagging:
                self.lagging = False
                return None
            if not self.queue.empty():
                return self.queue.get_nowait()
            self._wake.clear()
            await self._wake.wait()

    def _offer(self, event: JobEvent) -> None:
        if not self.lagging:
            try:
                self.queue.put_nowait(event)
            except asyncio.QueueFull:
                self.lagging = True
                while not self.queue.empty():
                    self.queue.get_nowait()
        self._wake.set()

    def close(self) -> None:
        self._broadcaster._remove(self)

    def shut(self) -> None:
        self.closed = True
        self._wake.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@attrs.define
class Broadcaster:
    queue_size: int = 256
    _subscribers: dict[uuid.UUID, set[Subscription]] = attrs.field(factory=lambda: defaultdict(set))
    published: int = 0
    lagged: int = 0

    def subscribe(self, job_id: uuid.UUID) -> Subscription:
        sub = Subscription(job_id, asyncio.Queue(self.queue_size), self)
        self._subscribers[job_id].add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.job_id]

    def has_subscribers(self, job_id: uuid.UUID) -> bool:
        return job_id in self._subscribers

    def publish(self, event: JobEvent) -> None:
        self.published += 1
        for sub in self._subscribers.get(event.job_id, ()):
            was_lagging = sub.lagging
            sub._offer(event)
            if sub.lagging and not was_lagging:
                self.lagged += 1

    def close_all(self) -> None:
        """Ends every stream (graceful shutdown): each sees `closed` and returns."""
        for subs in list(self._subscribers.values()):
            for sub in list(subs):
                sub.shut()

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def subscribers_of(self, job_ids: set[uuid.UUID]) -> int:
        return sum(len(self._subscribers.get(j, ())) for j in job_ids)
