"""Job events: stored first (for replay and other instances), then fanned out locally."""

from __future__ import annotations

import time
import uuid
from typing import Any

import attrs
import structlog

from deepmemory_service.db.database import Database, retrying
from deepmemory_service.models import EventName, JobEvent
from deepmemory_service.runs.broadcaster import Broadcaster

log = structlog.get_logger(__name__)


@attrs.define
class JobEvents:
    db: Database
    broadcaster: Broadcaster
    origin: str

    async def emit(self, job_id: uuid.UUID, event: EventName, data: dict[str, Any]) -> JobEvent:
        async with self.db.conn() as conn:
            event_id = await conn.insert_event(job_id, event, data, self.origin)
        stored = JobEvent(event_id, job_id, event, data)
        self.broadcaster.publish(stored)
        return stored

    def progress(self, job_id: uuid.UUID, run_id: uuid.UUID, hz: float) -> Progress:
        return Progress(self, job_id, run_id, 1.0 / hz if hz > 0 else 0.0)


@attrs.define
class Progress:
    """Coalesces a job's progress events to at most `hz` a second; `flush` sends the last."""

    events: JobEvents
    job_id: uuid.UUID
    run_id: uuid.UUID
    interval_s: float
    _last_sent: float = 0.0
    _pending: dict[str, Any] | None = None

    async def update(self, status: str, done: int, total: int, message: str, **extra: Any) -> None:
        self._pending = {
            "job_id": str(self.job_id),
            "run_id": str(self.run_id),
            "status": status,
            "done": done,
            "total": total,
            "fraction": round(done / total, 4) if total else 1.0,
            "message": message,
            **extra,
        }
        if time.monotonic() - self._last_sent >= self.interval_s:
            await self.flush()

    async def flush(self) -> None:
        if self._pending is None:
            return
        data, self._pending = self._pending, None
        self._last_sent = time.monotonic()
        # a progress event is worth a retry through a dropped connection, not the run: an
        # insert whose reply was lost may leave it twice, which a progress bar does not mind
        await retrying(lambda: self.events.emit(self.job_id, "progress", data))
