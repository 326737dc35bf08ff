"""A user's Deep Memory settings: what the page and the API show (the spec's fields, the
trainer, and why a trained model may not be enabled), and the command that turns Deep
Memory on or off, which only a model the trainer let through may be."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from attrs import frozen

from deepmemory_service.db.database import Conn, UserSettingsRow
from deepmemory_service.errors import Conflict
from deepmemory_service.models import RunStatus
from deepmemory_service.platform.config import TrainerName
from deepmemory_service.runs.services import Services
from deepmemory_service.runs.supervisor import RunSupervisor


@frozen
class DeepMemorySettings:
    """A user's Deep Memory settings (the spec's fields, then `trainer` and the reason a
    model may not be enabled)."""

    enabled: bool
    last_trained_at: datetime | None
    last_training_run_id: uuid.UUID | None
    can_enable: bool
    total_chunks: int
    trained_chunk_count: int
    has_blocking_run: bool
    blocking_run_id: uuid.UUID | None
    blocking_run_status: RunStatus | None
    is_cloud: bool
    trainer: TrainerName
    can_enable_reason: str | None


async def read(svc: Services, user_id: uuid.UUID) -> DeepMemorySettings:
    """The user's settings as they stand (a read, retried through a brief outage)."""

    async def read(conn: Conn) -> tuple[UserSettingsRow | None, Any, int]:
        return (
            await conn.get_settings(user_id),
            await conn.blocking_run(user_id),
            await conn.total_chunks(user_id),
        )

    row, blocking, total = await svc.request_db.read(read)
    return DeepMemorySettings(
        enabled=row.enabled if row else False,
        last_trained_at=row.last_trained_at if row else None,
        last_training_run_id=row.last_training_run_id if row else None,
        can_enable=row.can_enable if row else False,
        total_chunks=total,
        trained_chunk_count=row.trained_chunk_count if row else 0,
        has_blocking_run=blocking is not None,
        blocking_run_id=blocking[0] if blocking else None,
        blocking_run_status=blocking[1] if blocking else None,
        is_cloud=svc.settings.is_cloud,
        trainer=svc.settings.trainer,
        can_enable_reason=row.can_enable_reason if row else None,
    )


async def set_enabled(svc: Services, sup: RunSupervisor, enabled: bool) -> None:
    """Turns Deep Memory on or off for the user; on only when the last trained model may be
    enabled (409 with the trainer's verdict otherwise)."""
    async with svc.request_db.tx(lock_user=sup.user_id) as conn:
        row = await conn.get_settings(sup.user_id)
        if enabled and (row is None or not row.can_enable):
            if row and row.can_enable_reason:
                # the trainer's verdict, a sentence of its own
                raise Conflict(f"Deep Memory cannot be enabled. {row.can_enable_reason}")
            reason = (
                "no trained model yet"
                if row is None or row.last_training_run_id is None
                else "the trained model may not be enabled"
            )
            raise Conflict(f"Deep Memory cannot be enabled: {reason}")
        await conn.set_enabled(sup.user_id, enabled)
