"""Events of jobs running on other instances: PostgreSQL NOTIFY → this instance's subscribers.

The payload names the stored event; it is read only when someone here is subscribed to that
job. If the listening connection drops, a subscriber misses nothing for long: the task is
restarted, and each SSE stream replays from the database by Last-Event-ID anyway.

The same channel carries requests to cancel a run (`{"cancel_run": id}`), made on whichever
instance the user asked: the one running it stops it (a missed one is caught at its next
lease renewal).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from deepmemory_service.services import Services

log = structlog.get_logger(__name__)
CHANNEL = "deepmemory_events"
CHECK_S = 5.0


async def listen(svc: Services, cancel_run: Callable[[uuid.UUID], object] = lambda _: None) -> None:
    pending: asyncio.Queue[int] = asyncio.Queue()

    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            note = json.loads(payload)
            if note.get("origin") == svc.owner:
                return
            if "cancel_run" in note:
                cancel_run(uuid.UUID(note["cancel_run"]))
            elif svc.broadcaster.has_subscribers(uuid.UUID(note["job_id"])):
                pending.put_nowait(int(note["id"]))
        except (ValueError, KeyError, TypeError):
            log.warning("bad notification payload", payload=payload[:200])

    conn = await svc.db.listen(CHANNEL, on_notify)
    try:
        while True:
            try:
                event_id = await asyncio.wait_for(pending.get(), CHECK_S)
            except TimeoutError:
                # a dead connection says nothing; ask it something to find out
                await conn.fetchval("SELECT 1", timeout=CHECK_S)
                continue
            # a burst of notifications arrives together: one round trip reads all of it
            event_ids = [event_id]
            while not pending.empty():
                event_ids.append(pending.get_nowait())
            async with svc.db.conn() as db:
                events = await db.get_events(event_ids)
            for event in events:
                svc.broadcaster.publish(event)
    finally:
        await asyncio.shield(conn.close(timeout=2))
