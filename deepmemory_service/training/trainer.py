"""Trainers: one interface; `local` (numpy adapter) and `activeloop` (Deep Memory cloud).

A trainer receives a run's pairs (question i is answered by chunk_ids[i]) and the user's
vector store, reports progress while it works, and returns evaluation metrics and whether
the model may be enabled. It raises `TrainingError` with a readable message on failure;
the run then becomes `training_failed` and `proceed` re-submits the same pairs. Search
asks the trainer for the user's model (`query_model`), so it never needs to know which
trainer made it or where it lives.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
from attrs import frozen

from deepmemory_service.storage.dataset import CorpusReader
from deepmemory_service.storage.embedders import Embedder
from deepmemory_service.storage.nearest import Nearest, SearchResult
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.vectors import Matrix


class TrainingError(Exception):
    """Training failed; the message is shown to the user as the run's error_message."""


@frozen
class TrainingRequest:
    user_id: uuid.UUID
    run_id: uuid.UUID
    questions: Sequence[str]
    chunk_ids: Sequence[int]
    store: ChunkStore
    embedder: Embedder
    # the store at the catalog's version, read when the trainer needs the corpus itself
    # (the service passes it; without, the newest version the store knows)
    read_corpus: CorpusReader = attrs.field(
        default=attrs.Factory(lambda request: request.store.latest, takes_self=True)
    )


@frozen
class TrainingProgress:
    """What the trainer is doing now; `fraction` in [0, 1] drives the progress bar."""

    message: str
    fraction: float
    details: dict[str, Any]


@frozen
class TrainingOutcome:
    metrics: dict[str, Any]
    can_enable: bool
    # why the model may not be enabled (it evaluated worse than no model, say)
    reason: str | None = None


Reporter = Callable[[TrainingProgress], Awaitable[None]]


class NoModel(Exception):
    """The user has no trained model that search can use."""


class QueryModel(Protocol):
    """A user's trained model, as search uses it."""

    async def search(self, query: Matrix, k: int, nearest: Nearest) -> list[SearchResult]:
        """The top `k` chunks for one embedded query, best first; `nearest` searches the
        store at the catalog's version (a model that transforms the query searches with
        it). Raises `NoModel` when the model turns out not to exist."""
        ...


class Trainer(Protocol):
    name: str

    async def train(self, request: TrainingRequest, report: Reporter) -> TrainingOutcome: ...

    async def query_model(self, store: ChunkStore) -> QueryModel | None:
        """The model this trainer made for the store, or None when it has none."""
        ...

    async def aclose(self) -> None: ...
