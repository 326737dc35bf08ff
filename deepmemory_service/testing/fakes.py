"""An in-memory question generator and a trainer with the real interfaces, steerable by
tests.

The generator records every call per chunk, can fail chosen chunks or every call after the
Nth, and can hold calls until released, so a test sees a run in `generating` for as long as
it likes. The trainer's failures and verdicts are scripted, and it may keep a model that
search uses.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import attrs

from deepmemory_service.llm.generators import GenerationError, OfflineQuestionGenerator
from deepmemory_service.llm.rate_budget import Lane
from deepmemory_service.models import Chunk
from deepmemory_service.storage.nearest import Nearest, SearchResult
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.training.trainer import (
    Reporter,
    TrainingError,
    TrainingOutcome,
    TrainingProgress,
    TrainingRequest,
)
from deepmemory_service.vectors import Matrix


@attrs.define
class ControlledGenerator:
    name: str = "controlled"
    fail_after: int | None = None
    fail_chunks: set[int] = attrs.field(factory=set)
    gate: asyncio.Event | None = None
    calls: Counter[int] = attrs.field(factory=Counter)
    successes: Counter[int] = attrs.field(factory=Counter)
    _offline: OfflineQuestionGenerator = attrs.field(factory=OfflineQuestionGenerator)
    started: asyncio.Event = attrs.field(factory=asyncio.Event)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def hold(self) -> None:
        self.gate = asyncio.Event()

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.gate = None

    async def generate(self, chunk: Chunk, count: int, lane: Lane | None = None) -> list[str]:
        self.calls[chunk.id] += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_after is not None and self.total_calls > self.fail_after:
            raise GenerationError(f"upstream HTTP 500 (injected after {self.fail_after} calls)")
        if chunk.id in self.fail_chunks:
            raise GenerationError(f"upstream HTTP 500 (injected for chunk {chunk.id})")
        questions = await self._offline.generate(chunk, count)
        self.successes[chunk.id] += 1
        return questions

    async def aclose(self) -> None:
        return None


@attrs.frozen
class ScriptedModel:
    """A scripted trainer's model: the store's own nearest chunks, the last `MOVED` of the
    top k + `MOVED` put first, so that its results differ from search without it in a way a
    test can predict (chunks new in the top k, the others a place or two lower)."""

    MOVED = 2

    async def search(self, query: Matrix, k: int, nearest: Nearest) -> list[SearchResult]:
        found = await nearest(query, k + self.MOVED)
        if len(found) <= self.MOVED:
            return found[:k]
        return (found[-self.MOVED :] + found[: -self.MOVED])[:k]


@attrs.define
class ScriptedTrainer:
    """A trainer with the real interface that fails its first `failures` calls.

    It keeps each submission's pairs, so a test can check that `proceed` re-submitted
    exactly the run's stored pairs. Its verdicts are scripted: `verdicts[i]` says whether
    the i-th training's model may be enabled (`can_enable` past the list). With
    `keeps_model`, it keeps, as the local trainer does, the model of the last training whose
    verdict let it be enabled (`ScriptedModel`), and search may use it.
    """

    name: str = "scripted"
    failures: int = 0
    can_enable: bool = True
    submissions: list[list[tuple[int, str]]] = attrs.field(factory=list)
    gate: asyncio.Event | None = None
    verdicts: list[bool] = attrs.field(factory=list)
    keeps_model: bool = False
    model_run_id: uuid.UUID | None = None
    trainings: int = 0

    async def train(self, request: TrainingRequest, report: Reporter) -> TrainingOutcome:
        self.submissions.append(list(zip(request.chunk_ids, request.questions, strict=True)))
        await report(TrainingProgress("training", 0.5, {"epoch": 1}))
        if self.gate is not None:
            await self.gate.wait()
        if len(self.submissions) <= self.failures:
            raise TrainingError("injected trainer fault: job failed upstream")
        await report(TrainingProgress("evaluating", 1.0, {"epoch": 2}))
        verdict = (
            self.verdicts[self.trainings]
            if self.trainings < len(self.verdicts)
            else self.can_enable
        )
        self.trainings += 1
        if verdict and self.keeps_model:
            self.model_run_id = request.run_id
        # a refused model's figures say why: it found less than search without it
        return TrainingOutcome(
            {"recall@10": {"with_model": 0.9 if verdict else 0.4, "without_model": 0.5}},
            verdict,
            None if verdict else "It scored worse than no model.",
        )

    async def query_model(self, store: ChunkStore) -> ScriptedModel | None:
        return ScriptedModel() if self.model_run_id is not None else None

    async def aclose(self) -> None:
        return None
