"""`GET /v1/api/events/stream/{job_id}`: a job's events over Server-Sent Events.

Subscribe first, then replay stored events after `Last-Event-ID`, then go live, skipping
what the replay already sent; a subscriber that lagged catches up from the database. The
stream ends after the terminal event, or at once when the job is over and nothing is left.
"""

from __future__ import annotations

import asyncio
import uuid

import attrs
import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from deepmemory_service.api.keys import SERVICES
from deepmemory_service.api.payloads import last_event_id, path_uuid, query_uuid
from deepmemory_service.db.database import UNAVAILABLE, retrying
from deepmemory_service.errors import NotFound
from deepmemory_service.models import JobEvent
from deepmemory_service.runs.broadcaster import Subscription
from deepmemory_service.runs.services import Services

log = structlog.get_logger(__name__)
PING_S = 15.0
# nginx's "client closed request": the answer to a request whose client left before its
# stream began, for the access log's sake (nothing reaches a connection that is gone)
CLIENT_LEFT = 499


def client_connected(request: web.Request) -> bool:
    """The request's client is still there: aiohttp does not cancel a handler whose client
    left, and a stream that has sent nothing yet has not found out by writing."""
    transport = request.transport
    return transport is not None and not transport.is_closing()


class ClientGone(Exception):
    """The client's connection went away under a write to it."""


@attrs.define
class JobStream:
    """One client's view of a job's events: what it was sent last, and where to get more."""

    svc: Services
    request: web.Request
    job_id: uuid.UUID
    user_id: uuid.UUID
    resp: EventSourceResponse
    sub: Subscription
    last: int

    async def send(self, event: JobEvent) -> None:
        # the frame bytes are shared by every subscriber of the event (aiohttp-sse's `send`
        # would format them again for each), with the same stalled-client bound as its `send`:
        # a client that takes longer than this to accept one event is stalled and is cut
        try:
            async with asyncio.timeout(self.svc.settings.http.sse_send_timeout_s):
                await self.resp.write(event.sse_frame)
        except TimeoutError:
            self.resp.stop_streaming()
            if (transport := self.request.transport) is not None:
                transport.abort()
            raise
        except ConnectionError as exc:
            # the connection was lost under the write: the client left, or the kernel cut a
            # stalled one (aiohttp-sse, from 3.0, sets TCP_USER_TIMEOUT to the same bound,
            # counted from when the client's window closed: it often ends a stall before the
            # timeout above)
            self.resp.stop_streaming()
            cause = exc.__cause__ or exc
            if isinstance(cause, TimeoutError):
                raise TimeoutError(str(cause)) from exc
            raise ClientGone(str(cause)) from exc
        self.last = event.id

    async def _stored_after(self) -> list[JobEvent]:
        async with self.svc.db.conn() as conn:
            return await conn.events_after(self.job_id, self.last)

    async def _job_running(self) -> bool:
        async with self.svc.db.conn() as conn:
            current = await conn.get_job(self.job_id, self.user_id)
        return current is not None and current.status == "running"

    async def catch_up(self) -> bool:
        """Sends stored events after `last`; True once the terminal one is sent."""
        while True:
            stored = await retrying(self._stored_after)
            for event in stored:
                await self.send(event)
                if event.is_terminal:
                    return True
            if len(stored) < 500:
                return False

    async def follow(self) -> None:
        if await self.catch_up():
            return
        # a finished job stored its terminal event before finishing: nothing more comes
        if not await retrying(self._job_running):
            await self.catch_up()
            return
        # one watcher per stream, not per event: a client that leaves (its ping fails)
        # wakes the subscription, which then reads as closed
        gone = asyncio.ensure_future(self.resp.wait())
        gone.add_done_callback(lambda _: self.sub.shut())
        try:
            while True:
                event = await self.sub.next()
                if self.sub.closed:
                    return
                if event is None:
                    # this subscriber lagged and its queue was dropped: read what it missed
                    if await self.catch_up():
                        return
                    continue
                if event.id <= self.last:
                    continue
                await self.send(event)
                if event.is_terminal:
                    return
        finally:
            gone.cancel()


async def stream(request: web.Request) -> web.StreamResponse:
    user_id = query_uuid(request, "user_id")
    job_id = path_uuid(request, "job_id")
    # checked before the stream starts: afterwards an error could only cut it
    after = last_event_id(request)
    svc = request.app[SERVICES]
    # a request's bounds until the stream starts; then the stream's reads wait an outage out
    async with svc.request_db.conn() as conn:
        job = await conn.get_job(job_id, user_id)
    if job is None:
        raise NotFound("Job not found")
    if not client_connected(request):
        # a gateway that gave up waiting for this stream (its client left) has gone
        log.info("event stream not begun: the client left")
        return web.Response(status=CLIENT_LEFT)

    # the pings (and the kernel's TCP_USER_TIMEOUT) get the same bound as the events
    send_timeout_s = svc.settings.http.sse_send_timeout_s
    with svc.broadcaster.subscribe(job_id) as sub:
        try:
            opening = sse_response(request, ping_interval=PING_S, send_timeout=send_timeout_s)
            async with opening as resp:
                try:
                    await JobStream(svc, request, job_id, user_id, resp, sub, after).follow()
                except UNAVAILABLE as exc:
                    # a clean end; the client reconnects with Last-Event-ID and misses nothing
                    log.warning("event stream ended: database unavailable", error=str(exc))
                except TimeoutError:
                    log.warning("event stream cut: the client accepted nothing for a long time")
                except ClientGone as exc:
                    log.info("event stream ended: the client's connection was lost", error=str(exc))
        except ConnectionError:
            # the client left as the stream began: its headers found the connection closed
            log.info("event stream not begun: the client left")
            return web.Response(status=CLIENT_LEFT)
    return resp
