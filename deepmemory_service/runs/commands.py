"""The run commands: a new run (generate), proceed, train a generated run, cancel, delete.

Each runs inside the user's supervisor (one at a time per user in this process) and inside
a transaction holding the user's advisory lock (one at a time per user across instances).
Work starts only after the transaction commits, so a crash in between leaves a leased run
that the sweeper turns into a failed, recoverable one. A client waits for a command: its
database waits are a request's (`svc.request_db`); the work it starts waits an outage out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import structlog
from attrs import frozen

from deepmemory_service.db.database import Conn, UniqueViolation
from deepmemory_service.errors import (
    BadRequest,
    BlockingRunExists,
    InvalidInput,
    not_failed,
    not_running,
    run_not_found,
)
from deepmemory_service.models import Job, JobAccepted, JobKind, Run, RunStatus
from deepmemory_service.runs import generate, leases, train
from deepmemory_service.runs.services import Services
from deepmemory_service.runs.supervisor import RunSupervisor, WorkStatus

log = structlog.get_logger(__name__)


async def _locked_run(conn: Conn, user_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    """The user's run, locked until the transaction ends; another user's is not found."""
    run = await conn.get_run(run_id, user_id, for_update=True)
    if run is None:
        raise run_not_found()
    return run


def _start_job(svc: Services, sup: RunSupervisor, run: Run, job: Job) -> None:
    job_of = _generate_then_train if job.kind is JobKind.GENERATE else train.training_job
    sup.start_work(run.id, job.id, run.status, lambda work: job_of(svc, work, run, job))


async def _generate_then_train(svc: Services, work: WorkStatus, run: Run, job: Job) -> None:
    """A generation job: the run's pairs, then, when the run asked for it (`auto_train`),
    its training in the same job and stream."""
    generated = await generate.generation_job(svc, work, run, job)
    if generated is None:
        return
    if not generated.auto_train:
        await generate.end_generated(svc, job, generated)
        return
    training = await train.begin_after_generation(svc, job, generated)
    if training is not None:
        work.status = RunStatus.TRAINING
        await train.training_job(svc, work, training, job)


async def new_run(
    svc: Services,
    sup: RunSupervisor,
    questions_per_chunk: int | None,
    auto_train: bool,
    regenerate: bool = False,
) -> JobAccepted:
    """A new run of the user's chunks. It reuses the questions of the user's latest
    completed run for every chunk whose text that run covered, unless `regenerate`."""
    user_id = sup.user_id
    gen = svc.settings.generation
    qpc = gen.questions_per_chunk if questions_per_chunk is None else questions_per_chunk
    if not 1 <= qpc <= gen.max_questions_per_chunk:
        raise InvalidInput(
            f"questions_per_chunk: must be between 1 and {gen.max_questions_per_chunk}, got {qpc}"
        )
    try:
        async with svc.request_db.tx(lock_user=user_id) as conn:
            blocking = await conn.blocking_run(user_id)
            if blocking is not None:
                raise BlockingRunExists(*blocking)
            if await conn.total_chunks(user_id) == 0:
                raise BadRequest(
                    "No chunks to generate from: add documents first (POST /v1/api/documents)"
                )
            source = None if regenerate else await conn.reuse_source(user_id, qpc)
            run = await conn.create_run(
                uuid.uuid4(),
                user_id,
                qpc,
                auto_train,
                svc.instance_id,
                svc.settings.lease.ttl_s,
                source,
            )
            job = await conn.create_job(run.id, user_id, JobKind.GENERATE)
    except UniqueViolation:
        # the partial unique index caught a race the lock did not (it should never happen)
        async with svc.request_db.conn() as conn:
            blocking = await conn.blocking_run(user_id)
        if blocking is None:
            raise
        raise BlockingRunExists(*blocking) from None
    log.info(
        "run created",
        run_id=str(run.id),
        total_chunks=run.total_chunks,
        questions_per_chunk=qpc,
        reuses=str(run.reused_from) if run.reused_from else None,
    )
    _start_job(svc, sup, run, job)
    return JobAccepted(job.id, run.id)


async def proceed(svc: Services, sup: RunSupervisor, run_id: uuid.UUID) -> JobAccepted:
    async with svc.request_db.tx(lock_user=sup.user_id) as conn:
        run = await _locked_run(conn, sup.user_id, run_id)
        if not run.status.is_failed:
            raise not_failed(run.status)
        lease_s = svc.settings.lease.ttl_s
        if run.status is RunStatus.GENERATING_FAILED:
            run = await conn.resume_run(run, RunStatus.GENERATING, svc.instance_id, lease_s)
            kind = JobKind.GENERATE
            message = f"Resuming generation from chunk {run.generated_chunks}/{run.total_chunks}"
        else:
            pairs = await conn.count_pairs(run.id)
            run = await conn.resume_run(run, RunStatus.TRAINING, svc.instance_id, lease_s)
            kind = JobKind.TRAIN
            message = (
                f"Resuming training with {pairs} pairs from chunk "
                f"{run.generated_chunks}/{run.total_chunks}"
            )
        job = await conn.create_job(run.id, sup.user_id, kind)
    log.info("run resumed", run_id=str(run.id), message=message)
    _start_job(svc, sup, run, job)
    return JobAccepted(job.id, run.id, message)


async def train_generated(svc: Services, sup: RunSupervisor, run_id: uuid.UUID) -> JobAccepted:
    async with svc.request_db.tx(lock_user=sup.user_id) as conn:
        run = await _locked_run(conn, sup.user_id, run_id)
        if run.status is not RunStatus.GENERATED:
            raise BadRequest(
                f"Training run must be in status generated to train; its status is {run.status}"
            )
        run = await conn.start_training(run, svc.instance_id, svc.settings.lease.ttl_s)
        job = await conn.create_job(run.id, sup.user_id, JobKind.TRAIN)
    _start_job(svc, sup, run, job)
    return JobAccepted(job.id, run.id)


async def delete(svc: Services, sup: RunSupervisor, run_id: uuid.UUID) -> str:
    async with svc.request_db.tx(lock_user=sup.user_id) as conn:
        run = await _locked_run(conn, sup.user_id, run_id)
        if not run.status.is_failed:
            raise not_failed(run.status)
        pairs = await conn.count_pairs(run.id)
        await conn.delete_run(run.id, sup.user_id)
    log.info("run deleted", run_id=str(run_id), pairs=pairs)
    return f"Training run and {pairs} associated pairs deleted"


# how long a cancel waits for the run to stop before answering that it was asked to
CANCEL_WAIT_S = 5.0
CANCEL_POLL_S = 0.05


@frozen
class Cancelled:
    """A cancel's outcome: the run's status after it, and what happened in words."""

    run_id: uuid.UUID
    status: RunStatus
    message: str
    stopped: bool


async def cancel(svc: Services, sup: RunSupervisor, run_id: uuid.UUID) -> Cancelled:
    """Stops a generating or training run, keeping every pair written; it becomes
    generating_failed / training_failed with a message saying where it stopped, and Proceed
    and Delete apply. The run may be working on another instance: that one hears of it."""
    async with svc.request_db.tx(lock_user=sup.user_id) as conn:
        run = await _locked_run(conn, sup.user_id, run_id)
        if run.status not in (RunStatus.GENERATING, RunStatus.TRAINING):
            raise not_running(run.status)
        owner, lease_expired = await conn.request_cancel(run.id, svc.instance_id)
    log.info("run cancel requested", run_id=str(run_id), owner=owner)
    here = owner == svc.instance_id and sup.work is not None and sup.work.run_id == run_id
    if here:
        assert sup.work is not None
        sup.work.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT_S):
                await sup.wait_idle()
    elif lease_expired:
        # nobody runs it any more (its instance died): the sweeper's verdict, now
        await leases.sweep_once(svc)
    return await _after_cancel(svc, sup.user_id, run_id)


async def _after_cancel(svc: Services, user_id: uuid.UUID, run_id: uuid.UUID) -> Cancelled:
    deadline = time.monotonic() + CANCEL_WAIT_S
    while True:
        async with svc.request_db.conn() as conn:
            run = await conn.get_run(run_id, user_id)
        if run is None:
            raise run_not_found()
        if run.status not in (RunStatus.GENERATING, RunStatus.TRAINING):
            return Cancelled(run.id, run.status, run.error_message or str(run.status), True)
        if time.monotonic() > deadline:
            return Cancelled(
                run.id,
                run.status,
                "Cancel requested; the run stops as soon as its instance hears of it",
                False,
            )
        await asyncio.sleep(CANCEL_POLL_S)
