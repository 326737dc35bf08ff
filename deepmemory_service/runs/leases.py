"""Run leases: this instance renews the leases of its running runs; a sweeper fails runs
whose owner stopped renewing (a crash, a kill -9), so their users can Proceed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import structlog

from deepmemory_service.db.database import CONNECTION_ERRORS
from deepmemory_service.models import Job, JobKind, Run, RunStatus
from deepmemory_service.runs import jobs
from deepmemory_service.runs.services import Services

log = structlog.get_logger(__name__)

LOST = (
    "The worker running this run was lost ({why}); pairs written so far are kept. "
    "Proceed to resume."
)


async def heartbeat(
    svc: Services,
    working: Callable[[], list[uuid.UUID]],
    cancel: Callable[[uuid.UUID], object] = lambda _: None,
) -> None:
    """Renews the leases of the runs `working()` names: those with live work here; and
    `cancel`s those a user asked to stop (the NOTIFY that says so may have been missed)."""
    cfg = svc.settings.lease
    while True:
        await asyncio.sleep(cfg.heartbeat_s)
        try:
            async with svc.db.conn() as conn:
                cancelled = await conn.renew_leases(svc.instance_id, cfg.ttl_s, working())
        except CONNECTION_ERRORS as exc:
            log.warning("lease renewal failed", error=str(exc))
            continue
        for run_id in cancelled:
            cancel(run_id)


async def _end_jobs(svc: Services, swept: list[Run], message: str) -> None:
    for run in swept:
        async with svc.db.conn() as conn:
            job_ids = await conn.running_jobs_of_run(run.id)
        for job_id in job_ids:
            kind = JobKind.GENERATE if run.status is RunStatus.GENERATING_FAILED else JobKind.TRAIN
            job = Job(job_id, run.id, run.user_id, kind, "running")
            await jobs.end_failed(svc, job, run, run.status, message)


async def sweep_once(svc: Services, working: Callable[[], list[uuid.UUID]] = list) -> list[Run]:
    """Fails the runs whose lease expired, after renewing those `working()` names (with
    live work here): when the database did not answer for longer than a lease (a server
    frozen, say), only their renewals were held up, and the first sweep after it must not
    fail them."""
    message = LOST.format(why="its lease expired")
    async with svc.db.conn() as conn:
        live = working()
        if live:
            await conn.renew_leases(svc.instance_id, svc.settings.lease.ttl_s, live)
        swept = await conn.expire_leases(message)
    for run in swept:
        log.warning("run lease expired", run_id=str(run.id), status=run.status)
    await _end_jobs(svc, swept, message)
    return swept


async def sweeper(svc: Services, working: Callable[[], list[uuid.UUID]] = list) -> None:
    while True:
        try:
            await sweep_once(svc, working)
        except CONNECTION_ERRORS as exc:
            log.warning("lease sweep failed", error=str(exc))
        await asyncio.sleep(svc.settings.lease.sweep_s)


async def release_all(svc: Services) -> list[Run]:
    """On graceful shutdown: this instance's running runs fail now, not when leases expire."""
    message = LOST.format(why="the service shut down")
    async with svc.db.conn() as conn:
        released = await conn.release_leases(svc.instance_id, message)
    await _end_jobs(svc, released, message)
    return released
