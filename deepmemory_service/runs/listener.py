"""Events of jobs running on other instances: PostgreSQL NOTIFY → this instance's subscribers.

The payload names the stored event; it is read only when someone here is subscribed to that
job. If the listening connection drops, a subscriber misses nothing for long: the task is
restarted, and each SSE stream replays from the database by Last-Event-ID anyway.

The same channel carries requests to cancel a run (`{"cancel_run": id}`), made on whichever
instance the user asked: the one running it stops it (a missed one is caught at its next
lease renewal).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import structlog

from deepmemory_service.runs.services import Services

log = structlog.get_logger(__name__)
CHANNEL = "deepmemory_events"
CHECK_S = 5.0


def _wanted(svc: Services, payload: str, cancel_run: Callable[[uuid.UUID], object]) -> int | None:
    """The id of the event a notification names, if it is news to a subscriber here; a
    request to cancel a run is passed on at once."""
    try:
        note = json.loads(payload)
        if note.get("origin") == svc.instance_id:
            return None
        if "cancel_run" in note:
            cancel_run(uuid.UUID(note["cancel_run"]))
            return None
        if not svc.broadcaster.has_subscribers(uuid.UUID(note["job_id"])):
            return None
        return int(note["id"])
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("bad notification payload", payload=payload[:200])
        return None


async def listen(svc: Services, cancel_run: Callable[[uuid.UUID], object] = lambda _: None) -> None:
    async with svc.db.listening(CHANNEL, CHECK_S) as notifications:
        while True:
            # a burst of notifications arrives together: one round trip reads all of it
            payloads = await notifications.batch()
            wanted = (_wanted(svc, p, cancel_run) for p in payloads)
            event_ids = [i for i in wanted if i is not None]
            if not event_ids:
                continue
            async with svc.db.conn() as db:
                events = await db.get_events(event_ids)
            for event in events:
                svc.broadcaster.publish(event)
