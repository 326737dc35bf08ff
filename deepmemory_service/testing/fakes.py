"""An in-memory question generator with the real interface, steerable by tests.

It records every call per chunk, can fail chosen chunks or every call after the Nth, and
can hold calls until released, so a test sees a run in `generating` for as long as it likes.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import attrs

from deepmemory_service.llm.generators import GenerationError, OfflineQuestionGenerator
from deepmemory_service.llm.rate_budget import Lane
from deepmemory_service.models import Chunk
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.training.trainer import (
    Reporter,
    TrainingError,
    TrainingOutcome,
    TrainingProgress,
    TrainingRequest,
)


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


@attrs.define
class ScriptedTrainer:
    """A trainer with the real interface that fails its first `failures` calls.

    It keeps each submission's pairs, so a test can check that `proceed` re-submitted
    exactly the run's stored pairs.
    """

    name: str = "scripted"
    failures: int = 0
    can_enable: bool = True
    submissions: list[list[tuple[int, str]]] = attrs.field(factory=list)
    gate: asyncio.Event | None = None

    async def train(self, request: TrainingRequest, report: Reporter) -> TrainingOutcome:
        self.submissions.append(list(zip(request.chunk_ids, request.questions, strict=True)))
        await report(TrainingProgress("training", 0.5, {"epoch": 1}))
        if self.gate is not None:
            await self.gate.wait()
        if len(self.submissions) <= self.failures:
            raise TrainingError("injected trainer fault: job failed upstream")
        await report(TrainingProgress("evaluating", 1.0, {"epoch": 2}))
        return TrainingOutcome(
            {"recall@10": {"with_model": 0.9, "without_model": 0.5}},
            self.can_enable,
            None if self.can_enable else "It scored worse than no model.",
        )

    async def query_model(self, store: ChunkStore) -> None:
        return None

    async def aclose(self) -> None:
        return None
