"""What one user's uploads may occupy on this instance, so that one user cannot stall
everyone: at most `per_user` in progress (one more is a 429 with `Retry-After`), and of
those, one writing at a time. An upload waits for its turn here, before it takes a
database connection: waiting on the user's advisory lock instead would hold a pool
connection per waiting upload, and a dozen of them empty the pool for every other user.
The advisory lock still orders writers across instances.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import MappingProxyType

import attrs

from deepmemory_service.errors import ServiceError

RETRY_AFTER_S = 1


class TooManyUploads(ServiceError):
    status = 429
    headers = MappingProxyType({"Retry-After": str(RETRY_AFTER_S)})


@attrs.define
class UploadGate:
    per_user: int
    refused: int = 0
    # uploads waiting for their user's turn to write, on this instance
    waiting: int = 0
    _admitted: dict[uuid.UUID, int] = attrs.field(factory=dict, init=False)
    _turns: dict[uuid.UUID, asyncio.Lock] = attrs.field(factory=dict, init=False)

    def check(self, user_id: uuid.UUID) -> None:
        """`TooManyUploads` when `admit` would refuse: a refusal before the body is
        validated costs the event loop nothing."""
        if self._admitted.get(user_id, 0) >= self.per_user:
            self.refused += 1
            raise TooManyUploads(
                f"Too many uploads of this user in progress (at most {self.per_user} at "
                "once); retry shortly"
            )

    @asynccontextmanager
    async def admit(self, user_id: uuid.UUID) -> AsyncIterator[None]:
        """One upload of `user_id` in progress, or `TooManyUploads`."""
        self.check(user_id)
        self._admitted[user_id] = self._admitted.get(user_id, 0) + 1
        try:
            yield
        finally:
            left = self._admitted.pop(user_id) - 1
            if left:
                self._admitted[user_id] = left
            else:
                self._turns.pop(user_id, None)  # no upload of the user is in line for it

    @asynccontextmanager
    async def turn(self, user_id: uuid.UUID) -> AsyncIterator[None]:
        """The user's turn to write, on this instance (within `admit`)."""
        lock = self._turns.setdefault(user_id, asyncio.Lock())
        self.waiting += 1
        try:
            await lock.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            lock.release()

    def snapshot(self) -> dict[str, int]:
        return {
            "users": len(self._admitted),
            "in_progress": sum(self._admitted.values()),
            "waiting": self.waiting,
            "refused": self.refused,
        }
