"""Generation of a run's pairs: a fixed pool of chunk workers between bounded queues,
batched idempotent writes.

A producer pages the run's uncovered chunks (keyset by id, so memory stays flat however
large the run) into a bounded queue; a fixed pool of `concurrency` workers takes chunks
from it and asks the generator for questions (so at most `concurrency` calls are in flight
for the run); one writer takes their answers from a second bounded queue and stores pairs
in batches (one round trip each) and reports coalesced progress. The first
worker failure cancels the others at once; the writer still stores what was produced,
then the run becomes `generating_failed` and can be resumed from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import attrs
import structlog

from deepmemory_service.db.database import (
    CONNECTION_ERRORS,
    NOTHING_CHECKED,
    NOTHING_SPENT,
    Checked,
    LeaseLost,
    Spent,
    retrying,
)
from deepmemory_service.llm.generators import CheckedGenerator, GenerationError
from deepmemory_service.llm.rate_budget import Lane
from deepmemory_service.llm.usage import Prices
from deepmemory_service.models import Chunk, Job, Pair, Run, RunStatus, question_problem
from deepmemory_service.runs import jobs
from deepmemory_service.runs.events import Progress
from deepmemory_service.runs.questioning import Asker, RoundTrip
from deepmemory_service.runs.services import Services
from deepmemory_service.runs.supervisor import WorkStatus
from deepmemory_service.storage import corpus
from deepmemory_service.storage.dataset import StoreError

log = structlog.get_logger(__name__)

_END: Any = object()
PAGE = 500
# how long the writer holds a partial batch before writing it anyway
FLUSH_S = 0.05
# calls that waited this long for the provider's rate limit are worth telling the user
WAITING_NOTICE_S = 1.0
# while a run waits on that limit, its progress is re-sent this often (a stored event each)
WAITING_REFRESH_S = 15.0
# what a shutdown gives the run's last write (answers in hand, what its calls cost)
KEEP_AT_SHUTDOWN_S = 2.0


class WorkerLost(Exception):
    """The run's work stopped for a reason outside the generator (database, lease)."""


class GenerationCancelled(Exception):
    """A user asked the run to stop."""


@attrs.define
class Pipeline:
    svc: Services
    work: WorkStatus
    run: Run
    job: Job
    progress: Progress
    lane: Lane
    done: int
    # what the run had spent at the LLM before this job, and what was last stored
    spent_before: Spent
    stored_spent: Spent = NOTHING_SPENT
    # the checks of an LLM's questions (None: the generator's are not checked), and what
    # they had done in the run before this job, and what was last stored
    asker: Asker | None = None
    checked_before: Checked = NOTHING_CHECKED
    stored_checked: Checked = NOTHING_CHECKED
    chunks: asyncio.Queue[Any] = attrs.field(init=False)
    results: asyncio.Queue[Any] = attrs.field(init=False)
    failure: BaseException | None = None
    failed_chunk: int | None = None
    _tasks: list[asyncio.Task[None]] = attrs.field(factory=list)
    # workers inside a generator call: the only ones a failure cancels, so an answer
    # already paid for is still stored
    _calling: set[asyncio.Task[Any]] = attrs.field(factory=set)
    # the last progress sent: the same again is not sent (each is a stored event)
    _reported: tuple[Any, ...] | None = None
    # the answers the writer holds, not yet stored
    _batch: list[Pair] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        c = self.svc.settings.concurrency
        self.chunks = asyncio.Queue(maxsize=2 * c)
        self.results = asyncio.Queue(maxsize=4 * c)

    def _fail(self, exc: BaseException, chunk: Chunk | None = None) -> None:
        if self.failure is None:
            self.failure = exc
            self.failed_chunk = chunk.id if chunk else None
            current = asyncio.current_task()
            producer = self._tasks[0]
            if producer is not current:
                producer.cancel()
            for task in self._calling:
                if task is not current:
                    task.cancel()
            # idle workers wait for a chunk that will never come: send each one home
            while not self.chunks.empty():
                self.chunks.get_nowait()
            for _ in range(self.svc.settings.concurrency):
                self.chunks.put_nowait(_END)

    async def _producer(self) -> None:
        after = 0
        try:
            while True:
                async with self.svc.db.conn() as conn:
                    page = await conn.uncovered_chunks(self.run, after, PAGE)
                if not page:
                    break
                for chunk in page:
                    await self.chunks.put(chunk)
                after = page[-1].id
            for _ in range(self.svc.settings.concurrency):
                await self.chunks.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    @contextlib.contextmanager
    def _in_call(self) -> Iterator[None]:
        """Around each generator call of a worker: the calls a failure cancels. Once the
        run has failed, no new call starts (a chunk asked again is dropped: it is not done
        until its questions are stored, and a proceed asks it afresh)."""
        if self.failure is not None:
            raise GenerationCancelled
        me = asyncio.current_task()
        assert me is not None
        self._calling.add(me)
        try:
            yield
        finally:
            self._calling.discard(me)

    async def _worker(self) -> None:
        qpc = self.run.questions_per_chunk
        generator = self.svc.generator
        while self.failure is None:
            chunk = await self.chunks.get()
            if chunk is _END or self.failure is not None:
                return
            self.work.workers_busy += 1
            try:
                if self.asker is not None:
                    questions = await self.asker.ask(chunk, qpc, self.lane, self._in_call)
                else:
                    with self._in_call():
                        questions = await generator.generate(chunk, qpc, self.lane)
                # the last guard before the batch: one answer that cannot be stored must
                # fail its own chunk, not the insert of every other chunk's answers (a
                # checked chunk may keep fewer questions once the asking again ran out)
                if (
                    not questions
                    or len(questions) > qpc
                    or (self.asker is None and len(questions) != qpc)
                ):
                    raise GenerationError(
                        f"generator {generator.name} returned {len(questions)} questions, "
                        f"expected {qpc}"
                    )
                for question in questions:
                    if (problem := question_problem(question.strip())) is not None:
                        raise GenerationError(f"generator {generator.name} returned {problem}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._fail(exc, chunk)
                return
            finally:
                self.work.workers_busy -= 1
            pairs = [Pair(chunk.id, i, q.strip()) for i, q in enumerate(questions)]
            await self.results.put(pairs)

    async def _writer(self) -> None:
        batch_size = self.svc.settings.generation.batch_size
        deadline = 0.0
        ended = False
        try:
            while not ended:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the
                    # answer when a cancel lands as it arrives, and a writer that lost the
                    # shutdown's cancel waited for answers forever (the process never exited)
                    timeout = max(0.0, deadline - time.monotonic()) if self._batch else None
                    async with asyncio.timeout(timeout):
                        item = await self.results.get()
                except TimeoutError:
                    await self._write_held()
                    continue
                if item is _END:
                    ended = True
                    await self._write_held()
                    return
                if not self._batch:
                    deadline = time.monotonic() + FLUSH_S
                self._batch.extend(item)
                if len(self._batch) >= batch_size:
                    await self._write_held()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)
            # keep draining so no worker blocks on a full queue before it is cancelled
            while not ended:
                ended = await self.results.get() is _END

    async def _write_held(self) -> None:
        """Stores the answers the writer holds (they stay held if storing fails)."""
        await self._write(self._batch)
        self._batch = []

    async def keep_what_was_paid_for(self) -> None:
        """At a shutdown, before the run is released: the answers in hand and what the
        calls spent (those cut off in flight count too) are stored, within `KEEP_AT_SHUTDOWN_S`
        (a database that does not answer must not hold up the exit)."""
        while not self.results.empty():
            item = self.results.get_nowait()
            if item is not _END:
                self._batch.extend(item)
        try:
            async with asyncio.timeout(KEEP_AT_SHUTDOWN_S):
                await self._write_held()
        except Exception as exc:
            log.warning("could not store what the run spent at shutdown", error=str(exc))

    @property
    def spent(self) -> Spent:
        """What this job has spent at the LLM so far."""
        lane = self.lane
        return Spent(lane.calls, lane.prompt_tokens, lane.completion_tokens)

    @property
    def checked(self) -> Checked:
        """What the question checks have done in the run, this job included."""
        if self.asker is None:
            return self.checked_before
        return self.asker.tally.total(self.checked_before)

    async def _write(self, batch: list[Pair]) -> None:
        spent, checked = self.spent, self.checked
        if not batch and spent == self.stored_spent and checked == self.stored_checked:
            return

        async def store() -> int:
            async with self.svc.db.conn() as conn:
                covered, _ = await conn.insert_pairs(
                    self.run.id,
                    self.job.id,
                    batch,
                    self.svc.instance_id,
                    spent,
                    self.spent_before + spent,
                    checked,
                )
            return covered

        try:
            # the insert is idempotent, so a retry after a lost reply adds nothing twice
            covered = await retrying(store)
        except CONNECTION_ERRORS as exc:
            raise WorkerLost(f"database unavailable while storing pairs: {exc}") from exc
        self.stored_spent = spent
        self.stored_checked = checked
        metrics = self.svc.metrics
        metrics.chunks_generated += covered - self.done
        metrics.pairs_written += len(batch)
        self.done = covered
        await self._report()

    @property
    def waiting_on_provider(self) -> bool:
        """Calls of this run have waited a while for the provider's rate limit."""
        since = self.lane.waiting_since
        return since is not None and time.monotonic() - since >= WAITING_NOTICE_S

    async def _report(self) -> None:
        total, waiting = self.run.total_chunks, self.waiting_on_provider
        reused = self.run.reused_chunks
        message = f"Generated questions for {self.done}/{total} chunks"
        if reused:
            message += f" ({reused} reused from the last trained run)"
        if waiting:
            message += "; waiting on the provider's rate limit"
        spent = self.spent_before + self.spent
        report = (self.done, message, self.lane.waiting, spent)
        if report == self._reported:
            return
        self._reported = report
        await self.progress.update(
            RunStatus.GENERATING,
            self.done,
            total,
            message,
            reused_chunks=reused,
            waiting_on_provider=waiting,
            calls_waiting=self.lane.waiting,
            llm_calls=spent.calls,
            prompt_tokens=spent.prompt_tokens,
            completion_tokens=spent.completion_tokens,
            cost_usd=Prices.of(self.svc.settings.llm).cost(
                spent.prompt_tokens, spent.completion_tokens
            ),
        )

    async def _watch_cancel(self) -> None:
        """A cancel stops the run like a failure: calls in flight are dropped, the answers
        already in hand are stored."""
        await self.work.cancelled.wait()
        self._fail(GenerationCancelled())

    async def _watch_provider_wait(self) -> None:
        """Progress says so when the run starts or stops waiting on the provider's limit
        (no pairs arrive then, so the writer has nothing to report), and refreshes the
        count of calls waiting every WAITING_REFRESH_S while it lasts: each report is a
        stored event, and a long wait must not fill the job's history with copies."""
        was, reported = False, 0.0
        while True:
            await asyncio.sleep(WAITING_NOTICE_S / 2)
            now = self.waiting_on_provider
            stale = now and time.monotonic() - reported >= WAITING_REFRESH_S
            if now != was or stale:
                await self._report()
                reported = time.monotonic()
            was = now

    async def run_all(self) -> None:
        writer = asyncio.create_task(self._writer(), name=f"writer:{self.run.id}")
        watchers = [asyncio.create_task(self._watch_cancel(), name=f"cancel:{self.run.id}")]
        if self.lane.limited:
            watchers.append(
                asyncio.create_task(self._watch_provider_wait(), name=f"wait:{self.run.id}")
            )
        try:
            await self._run_all(writer)
        finally:
            self.lane.close()
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def _run_all(self, writer: asyncio.Task[None]) -> None:
        self._tasks = [asyncio.create_task(self._producer(), name=f"producer:{self.run.id}")]
        self._tasks += [
            asyncio.create_task(self._worker(), name=f"worker:{self.run.id}:{i}")
            for i in range(self.svc.settings.concurrency)
        ]
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        except asyncio.CancelledError:
            for task in [*self._tasks, writer]:
                task.cancel()
            await asyncio.gather(*self._tasks, writer, return_exceptions=True)
            await self.keep_what_was_paid_for()
            raise
        await self.results.put(_END)
        await writer
        if self.failure is not None:
            raise self.failure


async def checked_asking(svc: Services, run: Run) -> Asker | None:
    """How this job asks for questions when the generator's are checked: the keys of the
    questions the run has stored, and for the round trip the user's chunk vectors (the
    store at the catalog's version). None when they are not checked."""
    generator, settings = svc.generator, svc.settings.questions
    if not settings.checks or not isinstance(generator, CheckedGenerator):
        return None
    if not generator.checks_questions:
        return None
    round_trip = None
    if settings.round_trip_k > 0:
        async with svc.db.conn() as conn:
            in_catalog = await conn.corpus(run.user_id)
        try:
            snapshot = await corpus.snapshot(svc.corpora, run.user_id, in_catalog)
        except StoreError as exc:
            # the questions are still checked; the store's trouble is the training's to report
            log.warning(
                "no round trip for this job: the vector store cannot be read", reason=str(exc)
            )
        else:
            round_trip = RoundTrip.of(svc.embedder, settings.round_trip_k, snapshot)
    asker = Asker(generator, settings, round_trip, svc.metrics)
    await asker.load_keys(svc.db, run.id)
    return asker


def failure_message(exc: BaseException, position: int | None, done: int, total: int) -> str:
    """The run's error: where it failed as the chunk's place in the run (1-based, of
    `total`, as in "Resuming generation from chunk N/M"), why, and how far it got."""
    where = f" at chunk {position}/{total}" if position is not None else ""
    reason = str(exc) or type(exc).__name__
    return f"Question generation failed{where}: {reason} ({done}/{total} chunks done)"


async def reuse(svc: Services, run: Run) -> Run:
    """Copies the questions of the run's reuse source for its unchanged chunks (the first
    step of a new run; idempotent, so a retry or a second job copies nothing twice)."""

    async def copy() -> tuple[int, int, int]:
        async with svc.db.conn() as conn:
            return await conn.reuse_pairs(run, svc.instance_id)

    covered, pairs, reused = await retrying(copy)
    svc.metrics.chunks_generated += covered - run.generated_chunks
    svc.metrics.pairs_written += pairs - run.pair_count
    log.info("questions reused", reused_chunks=reused, source=str(run.reused_from))
    return attrs.evolve(run, generated_chunks=covered, pair_count=pairs, reused_chunks=reused)


def start_message(run: Run) -> str:
    total, covered = run.total_chunks, run.generated_chunks
    if run.reused_chunks and covered == run.reused_chunks:
        return (
            f"Reused the questions of {run.reused_chunks}/{total} chunks from the last trained "
            f"run; generating questions for the other {total - covered}"
        )
    return f"Generating questions from chunk {covered}/{total}"


async def cancel_message(svc: Services, run: Run, done: int) -> str:
    """Where a cancelled run stopped: its first chunk without pairs (where Proceed goes
    on), as a place among its chunks, and how many are done."""
    total = run.total_chunks

    async def first_uncovered() -> int:
        async with svc.db.conn() as conn:
            page = await conn.uncovered_chunks(run, 0, 1)
            return await conn.chunk_position(run.user_id, page[0].id) if page else total

    at = await retrying(first_uncovered)
    return f"Generation cancelled at chunk {at}/{total} ({done}/{total} chunks done)"


async def chunk_position(svc: Services, run: Run, chunk_id: int | None) -> int | None:
    """The chunk's 1-based place among the run's chunks (they go in id order)."""
    if chunk_id is None:
        return None
    with contextlib.suppress(*CONNECTION_ERRORS):
        async with svc.db.conn() as conn:
            return await conn.chunk_position(run.user_id, chunk_id)
    return None


async def generation_job(svc: Services, work: WorkStatus, run: Run, job: Job) -> Run | None:
    """The generation of a run's pairs: the `generated` run, or None when it failed or was
    cancelled (the run is then failed with a message saying where, and the job ended)."""
    events = svc.events
    progress = events.progress(job.id, run.id, svc.settings.generation.progress_hz)
    pipeline: Pipeline | None = None
    started = time.monotonic()
    try:
        if run.reused_from is not None and run.generated_chunks == 0:
            run = await reuse(svc, run)
        if work.cancelled.is_set():
            raise GenerationCancelled
        await events.emit(
            job.id,
            "status",
            {
                "run_id": str(run.id),
                "status": RunStatus.GENERATING,
                "message": start_message(run),
                **({"reused_chunks": run.reused_chunks} if run.reused_chunks else {}),
            },
        )
        asker = await checked_asking(svc, run)
        lane = svc.budget.lane(run.user_id)
        work.lane = lane
        work.asker = asker
        pipeline = Pipeline(
            svc,
            work,
            run,
            job,
            progress,
            lane,
            done=run.generated_chunks,
            spent_before=Spent(run.llm_calls, run.prompt_tokens, run.completion_tokens),
            asker=asker,
            checked_before=Checked.of(run),
            stored_checked=Checked.of(run),
        )
        await pipeline.run_all()
    except asyncio.CancelledError:
        # shutdown: the run is released as failed by the shutdown path; the job ends here
        with contextlib.suppress(Exception):
            await progress.flush()
        raise
    except LeaseLost as exc:
        log.warning("run lost during generation", error=str(exc))
        await jobs.end_failed(svc, job, run, RunStatus.GENERATING_FAILED, str(exc))
        return None
    except GenerationCancelled:
        done = pipeline.done if pipeline else run.generated_chunks
        message = await cancel_message(svc, run, done)
        log.info("generation cancelled", message=message)
        await jobs.fail(svc, job, run, RunStatus.GENERATING, progress, message)
        return None
    except Exception as exc:
        failed_chunk = pipeline.failed_chunk if pipeline else None
        done = pipeline.done if pipeline else run.generated_chunks
        position = await chunk_position(svc, run, failed_chunk)
        message = failure_message(exc, position, done, run.total_chunks)
        log.warning("generation failed", error=message)
        svc.metrics.generation_failures += 1
        await jobs.fail(svc, job, run, RunStatus.GENERATING, progress, message)
        return None

    await progress.flush()
    async with svc.db.conn() as conn:
        finished = await conn.finish_generation(run.id, svc.instance_id)
    if finished is None:
        # not every snapshot chunk is covered (or the run is no longer ours): never leave
        # it `generating`; a failed run can be resumed, and resume covers what is missing
        async with svc.db.conn() as conn:
            current = await conn.get_run(run.id, run.user_id)
        message = (
            f"Generation ended with {current.generated_chunks}/{current.total_chunks} chunks "
            "covered; proceed to cover the rest"
            if current is not None
            else "run deleted while generating"
        )
        await jobs.fail(svc, job, run, RunStatus.GENERATING, progress, message)
        return None
    log.info(
        "generation finished",
        chunks=finished.generated_chunks,
        pairs=finished.pair_count,
        seconds=round(time.monotonic() - started, 3),
    )
    return finished


async def end_generated(svc: Services, job: Job, run: Run) -> None:
    """A generation job's end when no training follows: `done` with the pairs made."""
    await jobs.end_done(
        svc,
        job,
        run,
        RunStatus.GENERATED,
        pairs=run.pair_count,
        **({"reused_chunks": run.reused_chunks} if run.reused_chunks else {}),
    )
