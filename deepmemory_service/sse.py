"""`GET /v1/api/events/stream/{job_id}`: a job's events over Server-Sent Events.

Subscribe first, then replay stored events after `Last-Event-ID`, then go live, skipping
what the replay already sent; a subscriber that lagged catches up from the database. The
stream ends after the terminal event, or at once when the job is over and nothing is left.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from deepmemory_service.errors import InvalidInput, NotFound
from deepmemory_service.keys import SERVICES
from deepmemory_service.models import JobEvent
from deepmemory_service.payloads import path_uuid, query_uuid

routes = web.RouteTableDef()
PING_S = 15.0


async def _send(resp: EventSourceResponse, event: JobEvent) -> None:
    await resp.send(
        json.dumps(event.data, separators=(",", ":")), id=str(event.id), event=event.event
    )


@routes.get("/events/stream/{job_id}")
async def stream(request: web.Request) -> web.StreamResponse:
    user_id = query_uuid(request, "user_id")
    job_id = path_uuid(request, "job_id")
    raw_last = request.headers.get("Last-Event-ID", "").strip() or "0"
    if not raw_last.isdigit():
        raise InvalidInput(f"Last-Event-ID: must be an event id (an integer), got {raw_last!r}")
    last = int(raw_last)
    svc = request.app[SERVICES]
    async with svc.db.conn() as conn:
        job = await conn.get_job(job_id, user_id)
    if job is None:
        raise NotFound("Job not found")

    with svc.broadcaster.subscribe(job_id) as sub:
        async with sse_response(request, ping_interval=PING_S) as resp:

            async def catch_up() -> bool:
                """Sends stored events after `last`; True once the terminal one is sent."""
                nonlocal last
                while True:
                    async with svc.db.conn() as conn:
                        stored = await conn.events_after(job_id, last)
                    for event in stored:
                        await _send(resp, event)
                        last = event.id
                        if event.is_terminal:
                            return True
                    if len(stored) < 500:
                        return False

            if await catch_up():
                return resp
            async with svc.db.conn() as conn:
                current = await conn.get_job(job_id, user_id)
            # a finished job stored its terminal event before finishing: nothing more comes
            if current is None or current.status != "running":
                await catch_up()
                return resp
            gone = asyncio.ensure_future(resp.wait())
            try:
                while True:
                    upcoming = asyncio.ensure_future(sub.next())
                    await asyncio.wait({upcoming, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if not upcoming.done():
                        # the client went away (the ping failed): nothing to send to
                        upcoming.cancel()
                        break
                    event = upcoming.result()
                    if sub.closed:
                        break
                    if event is None:
                        if await catch_up():
                            break
                        continue
                    if event.id <= last:
                        continue
                    await _send(resp, event)
                    last = event.id
                    if event.is_terminal:
                        break
            finally:
                gone.cancel()
    return resp
