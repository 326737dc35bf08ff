"""How a job ends: its terminal event first (so a stream that sees the job finished has
already stored it), then the job row. Both are retried through a brief database outage:
a job that ended must not look running."""

from __future__ import annotations

import structlog

from deepmemory_service.db.database import retrying
from deepmemory_service.models import Job, Run, RunStatus
from deepmemory_service.runs.events import Progress
from deepmemory_service.runs.services import Services

log = structlog.get_logger(__name__)


# the failed status of a run that fails while in each running status
FAILED_FROM = {
    RunStatus.GENERATING: RunStatus.GENERATING_FAILED,
    RunStatus.TRAINING: RunStatus.TRAINING_FAILED,
}


async def fail(
    svc: Services, job: Job, run: Run, running: RunStatus, progress: Progress, message: str
) -> None:
    """A job's work failed (or was cancelled) while its run was `running`: the progress in
    hand is sent, the run goes to the failed status with `message`, and the job ends."""
    await progress.flush()
    await fail_run_and_job(svc, job, run, running, FAILED_FROM[running], message)


async def fail_run_and_job(
    svc: Services, job: Job, run: Run, from_status: RunStatus, to: RunStatus, message: str
) -> None:
    """The run goes to a failed status with `message`, then the job ends as `end_failed`."""

    async def record() -> Run | None:
        async with svc.db.conn() as conn:
            return await conn.fail_run(run.id, from_status, to, message, svc.instance_id)

    failed = await retrying(record)
    if failed is None:
        log.warning("run no longer ours when failing it", run_id=str(run.id))
    await end_failed(svc, job, run, to, message)


async def end_failed(svc: Services, job: Job, run: Run, status: RunStatus, message: str) -> None:
    """Only the job: a `failed` event naming the run's `status`, then the job row. For a run
    that has already left (or never had) its running status."""
    data = {"run_id": str(run.id), "status": status, "error_message": message}
    await retrying(lambda: svc.events.emit(job.id, "failed", data))
    await retrying(lambda: _finish(svc, job, "failed"))


async def end_done(svc: Services, job: Job, run: Run, status: RunStatus, **data: object) -> None:
    payload = {"run_id": str(run.id), "status": status, **data}
    await retrying(lambda: svc.events.emit(job.id, "done", payload))
    await retrying(lambda: _finish(svc, job, "succeeded"))


async def _finish(svc: Services, job: Job, status: str) -> None:
    async with svc.db.conn() as conn:
        await conn.finish_job(job.id, status)
