"""Training of a run: submit its pairs to the configured trainer, record the outcome.

`proceed` on a `training_failed` run comes here again with the same stored pairs: nothing
is regenerated. Any trainer failure, including a timeout, becomes `training_failed` with
a readable message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

import structlog

from deepmemory_service.models import Job, Run, RunStatus
from deepmemory_service.runs import jobs
from deepmemory_service.runs.services import Services
from deepmemory_service.runs.supervisor import WorkStatus
from deepmemory_service.storage import corpus
from deepmemory_service.storage.dataset import StoreError
from deepmemory_service.training.trainer import TrainingError, TrainingProgress, TrainingRequest

log = structlog.get_logger(__name__)
T = TypeVar("T")


class TrainingCancelled(Exception):
    """A user asked the training to stop."""


def _reason(exc: BaseException, timeout_s: float, data_dir: str) -> str:
    """The run's error message: readable, and naming no server path (the client sees it)."""
    if isinstance(exc, TrainingCancelled):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"Training timed out after {timeout_s:g}s"
    if isinstance(exc, TrainingError | StoreError):
        return f"Training failed: {exc}"
    if isinstance(exc, OSError):
        return f"Training failed: {type(exc).__name__}: {exc.strerror or 'I/O error'}"
    return f"Training failed: {type(exc).__name__}: {exc}".replace(data_dir, "<data dir>")


async def _unless_cancelled(call: Awaitable[T], work: WorkStatus, message: str) -> T:
    """`call`'s result, or `TrainingCancelled(message)` as soon as a user cancels the work
    (the trainer's task is cancelled: the local trainer's numpy thread stops at its next
    epoch and nothing is saved)."""
    task = asyncio.ensure_future(call)
    stop = asyncio.ensure_future(work.cancelled.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled() and work.cancelled.is_set():
        raise TrainingCancelled(message)
    return task.result()


async def _within(call: Awaitable[T], seconds: float) -> T:
    """`call`'s result, or TimeoutError after `seconds` (asyncio.timeout: unlike wait_for
    on Python 3.11, it never drops a cancel that lands as the call completes)."""
    async with asyncio.timeout(seconds):
        return await call


async def begin_after_generation(svc: Services, job: Job, generated: Run) -> Run | None:
    """A run generated with `auto_train`, moved on to training within the same job (and
    its stream told so); None when the run is no longer `generated`."""
    async with svc.db.tx(lock_user=generated.user_id) as conn:
        current = await conn.get_run(generated.id, generated.user_id, for_update=True)
        if current is None or current.status is not RunStatus.GENERATED:
            return None
        training = await conn.start_training(current, svc.instance_id, svc.settings.lease.ttl_s)
    await svc.events.emit(
        job.id,
        "status",
        {
            "run_id": str(generated.id),
            "status": RunStatus.GENERATED,
            "message": f"Generated {generated.pair_count} pairs; training next",
        },
    )
    return training


async def training_job(svc: Services, work: WorkStatus, run: Run, job: Job) -> None:
    events = svc.events
    progress = events.progress(job.id, run.id, svc.settings.generation.progress_hz)
    timeout_s = svc.settings.train.timeout_s
    started = time.monotonic()
    try:
        async with svc.db.conn() as conn:
            pairs = await conn.run_pairs(run.id)
            trained_chunks = await conn.distinct_pair_chunks(run.id)
            in_catalog = await conn.corpus(run.user_id)
        svc.corpora.check_embedder(in_catalog)
        await events.emit(
            job.id,
            "status",
            {
                "run_id": str(run.id),
                "status": RunStatus.TRAINING,
                "message": f"Training {svc.trainer.name} model on {len(pairs)} pairs",
            },
        )
        request = TrainingRequest(
            user_id=run.user_id,
            run_id=run.id,
            questions=[q for _, q in pairs],
            chunk_ids=[c for c, _ in pairs],
            store=svc.stores.for_user(run.user_id),
            embedder=svc.embedder,
            read_corpus=lambda: corpus.snapshot(svc.corpora, run.user_id, in_catalog),
        )
        del pairs

        async def report(update: TrainingProgress) -> None:
            await progress.update(
                RunStatus.TRAINING,
                round(update.fraction * 1000),
                1000,
                update.message,
                details=update.details,
            )

        outcome = await _unless_cancelled(
            _within(svc.trainer.train(request, report), timeout_s),
            work,
            f"Training cancelled; its {len(request.questions)} pairs are kept (Proceed trains "
            "again)",
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        message = _reason(exc, timeout_s, svc.settings.data_dir)
        log.warning("training failed", error=message)
        svc.metrics.training_failures += 1
        await jobs.fail(svc, job, run, RunStatus.TRAINING, progress, message)
        return

    await progress.flush()
    async with svc.db.tx(lock_user=run.user_id) as conn:
        completed = await conn.complete_run(run.id, svc.instance_id, outcome.metrics)
        if completed is not None:
            await conn.record_training(
                run.user_id,
                run.id,
                trained_chunks,
                outcome.can_enable,
                outcome.reason,
                outcome.metrics,
            )
    if completed is None:
        await jobs.end_failed(
            svc, job, run, RunStatus.TRAINING_FAILED, "run changed while training"
        )
        return
    svc.metrics.training_runs += 1
    log.info(
        "training finished",
        seconds=round(time.monotonic() - started, 3),
        can_enable=outcome.can_enable,
    )
    await jobs.end_done(
        svc, job, run, RunStatus.COMPLETED, can_enable=outcome.can_enable, metrics=outcome.metrics
    )
