"""Asking an LLM for a chunk's questions, checked: each question it writes is checked
(`llm/question_checks.py`), the ones turned down are counted by reason, and a chunk left
short is asked again for what it lacks, told what was wrong, at most `reasks` times.

The checks that need only the question come first; then the round trip (InPars,
Promptagator): the configured embedder embeds the questions that passed, and a question
is kept only when its chunk is among the `round_trip_k` nearest of the user's chunks (the
store at the catalog's version, read once per job). Each call asks for `spare` questions more
than the chunk lacks, and the first that pass are kept: a question turned down then seldom
costs a call that sends the chunk again.

A question must not repeat one asked of another chunk of the run: the keys of the run's
stored questions are read when the job starts (a proceed after a failure checks against
the chunks done before it), and a key is claimed as soon as its question passes the first
checks, so two chunks asked at once cannot both keep the same question.

Once the asking again runs out, a chunk keeps the questions that passed, fewer than asked
for (counted as a short chunk); one that passed none keeps the question turned down by the
softest check (`SOFTEST_FIRST`), so that every chunk is covered and the run can finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager

import attrs
import numpy as np
import numpy.typing as npt
import structlog

from deepmemory_service.db.database import Checked, Database
from deepmemory_service.llm.generators import CheckedGenerator
from deepmemory_service.llm.question_checks import (
    SOFTEST_FIRST,
    Feedback,
    Reason,
    Rejection,
    after_round_trip,
    check_answer,
    duplicate_key,
    ranks_within,
)
from deepmemory_service.llm.rate_budget import Lane
from deepmemory_service.models import Chunk
from deepmemory_service.platform.config import QuestionSettings
from deepmemory_service.platform.metrics import Metrics
from deepmemory_service.storage.dataset import Snapshot
from deepmemory_service.storage.embedders import Embedder

log = structlog.get_logger(__name__)

# stored questions read per round trip when a job starts
KEYS_PAGE = 5000


@attrs.define
class Tally:
    """What the checks did in this job: questions turned down by reason, times a chunk was
    asked again, chunks left short. Added to the run's counts from before the job."""

    rejections: Counter[str] = attrs.field(factory=Counter)
    reasks: int = 0
    short_chunks: int = 0
    # spares that passed beyond what their chunk lacked, so not kept (the job's and the
    # process's count: what the spares cost, not a question turned down)
    spares_unused: int = 0

    def total(self, before: Checked) -> Checked:
        """The run's counts: those before this job and this job's."""
        rejections = Counter(before.rejections)
        rejections.update(self.rejections)
        return Checked(
            {**{r.value: 0 for r in Reason}, **rejections},
            before.reasks + self.reasks,
            before.short_chunks + self.short_chunks,
        )


@attrs.define
class RoundTrip:
    """The user's chunk vectors, and where each chunk's row is (rows sorted by chunk id)."""

    embedder: Embedder
    k: int
    vectors: npt.NDArray[np.float32]
    ids: npt.NDArray[np.int64]
    order: npt.NDArray[np.int64]

    @classmethod
    def of(cls, embedder: Embedder, k: int, snapshot: Snapshot) -> RoundTrip:
        order = np.argsort(snapshot.ids, kind="stable").astype(np.int64)
        return cls(embedder, k, snapshot.vectors, snapshot.ids[order], order)

    def row(self, chunk_id: int) -> int | None:
        at = int(np.searchsorted(self.ids, chunk_id))
        return int(self.order[at]) if at < len(self.ids) and self.ids[at] == chunk_id else None

    async def kept(self, chunk_id: int, questions: list[str]) -> list[bool]:
        """Whether each question finds its chunk among the k nearest (all of them when
        the user has no more than k chunks, or the store has no row for the chunk)."""
        row = self.row(chunk_id)
        if row is None or len(self.ids) <= self.k or not questions:
            return [True] * len(questions)
        vectors = await self.embedder.embed(questions)
        return await asyncio.get_running_loop().run_in_executor(
            None, ranks_within, vectors, self.vectors, [row] * len(questions), self.k
        )


@attrs.define
class Asker:
    """One job's asking: the generator, the checks' settings, the round trip (None: off),
    the keys of the questions the run has kept, and this job's tally."""

    generator: CheckedGenerator
    settings: QuestionSettings
    round_trip: RoundTrip | None
    # the process's counters (/metrics), counted with the job's own
    metrics: Metrics | None = None
    keys: set[str] = attrs.field(factory=set)
    tally: Tally = attrs.field(factory=Tally)

    def __attrs_post_init__(self) -> None:
        # the prompt's own examples count as asked: a copy is never a chunk's question
        self.keys.update(duplicate_key(q) for q in self.generator.examples)

    async def load_keys(self, db: Database, run_id: uuid.UUID) -> None:
        """The keys of the questions the run has stored (a proceed's earlier jobs, questions
        reused from an earlier run), a page at a time."""
        after = (0, -1)
        while True:
            async with db.conn() as conn:
                page = await conn.run_questions_page(run_id, after, KEYS_PAGE)
            if not page:
                return
            self.keys.update(duplicate_key(q) for _, _, q in page)
            after = page[-1][:2]

    async def ask(
        self,
        chunk: Chunk,
        count: int,
        lane: Lane | None,
        in_call: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> list[str]:
        """The chunk's questions: `count` that passed, or fewer once the asking again ran
        out (at least one). Each generator call is made inside `in_call()` (the run's
        failure cancels the calls, not the checks of an answer already paid for)."""
        kept: list[str] = []
        turned_down: list[Rejection] = []
        for attempt in range(1 + self.settings.reasks):
            feedback = None
            if attempt:
                self.tally.reasks += 1
                if self.metrics is not None:
                    self.metrics.question_reasks += 1
                feedback = Feedback(tuple(turned_down))
            lacking = count - len(kept)
            with in_call():
                answer = await self.generator.generate(
                    chunk, lacking, lane, feedback, spare=self.settings.spare
                )
            new, rejected = await self._check(chunk, answer)
            kept += new[:lacking]
            self._set_aside(new[lacking:])
            turned_down += rejected
            if len(kept) >= count:
                return kept
        if not kept:
            softest = min(turned_down, key=lambda r: SOFTEST_FIRST.index(r.reason))
            kept = [softest.question]
            self.keys.add(duplicate_key(softest.question))
        self.tally.short_chunks += 1
        return kept

    def _set_aside(self, unused: list[str]) -> None:
        """Spares that passed beyond what their chunk lacked: not kept, so their keys go back
        (another chunk may still keep such a question), and counted."""
        for question in unused:
            self.keys.discard(duplicate_key(question))
        self.tally.spares_unused += len(unused)
        if self.metrics is not None:
            self.metrics.question_spares_unused += len(unused)

    async def _check(self, chunk: Chunk, answer: list[str]) -> tuple[list[str], list[Rejection]]:
        """The questions of one answer that pass every check, and those turned down (each
        counted by reason)."""
        passing, rejected = check_answer(answer, chunk.text, self.keys)
        if self.round_trip is not None and passing:
            found = await self.round_trip.kept(chunk.id, passing)
            passing, missed = after_round_trip(passing, found, self.keys)
            rejected += missed
        for r in rejected:
            log.debug(
                "question turned down",
                chunk_id=chunk.id,
                reason=r.reason.value,
                question=r.question,
            )
        self.tally.rejections.update(r.reason.value for r in rejected)
        if self.metrics is not None:
            self.metrics.questions_rejected.update(r.reason.value for r in rejected)
        return passing, rejected
