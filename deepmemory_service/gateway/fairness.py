"""What one user may hold at the gateway at once, so that one user's load never delays
another user's calls: event streams open (each holds a backend connection for as long as
its job runs) and other calls in flight, each counted per user on this gateway instance
and refused beyond its bound with a 429 and `Retry-After`. Streams and calls reach the
backend through connection pools of their own (`proxy.py`), so streams never take the
connections that calls need, and neither pool has a total that one user could fill."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
from aiohttp import web

from deepmemory_service.errors import TooManyRequests
from deepmemory_service.platform.config import HttpSettings


@attrs.define
class PerUser:
    """How many of one kind of thing each user holds; `refusal` is the 429's detail, with
    `{most}` for the bound."""

    most: int
    refusal: str
    _held: dict[uuid.UUID, int] = attrs.field(factory=dict, init=False)

    @contextmanager
    def holding(self, user_id: uuid.UUID) -> Iterator[None]:
        """One more held by `user_id` while the block runs, or `TooManyRequests`."""
        count = self._held.get(user_id, 0)
        if count >= self.most:
            raise TooManyRequests(self.refusal.format(most=self.most))
        self._held[user_id] = count + 1
        try:
            yield
        finally:
            left = self._held.pop(user_id) - 1
            if left:
                self._held[user_id] = left


@attrs.define
class UserLimits:
    """The gateway's bounds per user: event streams open, other calls in flight."""

    streams: PerUser
    calls: PerUser

    @classmethod
    def of(cls, http: HttpSettings) -> UserLimits:
        return cls(
            PerUser(
                http.sse_streams_per_user,
                "Too many event streams open for this user (at most {most} at once); "
                "close one, or retry shortly",
            ),
            PerUser(
                http.calls_per_user,
                "Too many calls of this user in progress (at most {most} at once); retry shortly",
            ),
        )


USER_LIMITS = web.AppKey("gateway_user_limits", UserLimits)
