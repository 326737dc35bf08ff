"""The nearest chunks of a user's vector store to a query vector, by cosine similarity.

The corpus-wide matrix product runs in an executor: on a large store it takes long enough
to stall every other request on the event loop."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
from attrs import frozen

from deepmemory_service.embedders import Matrix
from deepmemory_service.store import ChunkStore, StoreError


@frozen
class SearchResult:
    chunk_id: int
    text: str
    score: float


def nearest(vectors: Matrix, query: Matrix, k: int) -> list[tuple[int, float]]:
    """The `k` rows of `vectors` nearest the one `query` row by cosine similarity, best
    first, as (row, score)."""
    scores = (query @ vectors.T)[0]
    k = min(k, len(scores))
    if k == 0:
        return []
    top = np.argpartition(-scores, k - 1)[:k]
    return [(int(r), float(scores[r])) for r in top[np.argsort(-scores[top], kind="stable")]]


async def _texts(store: ChunkStore, ids: npt.NDArray[np.int64]) -> list[str]:
    texts = await store.texts(len(ids))
    if len(texts) != len(ids):
        raise StoreError(
            f"vector store {store.path} holds {len(ids)} vectors but {len(texts)} texts"
        )
    return texts


async def nearest_chunks(
    store: ChunkStore, query: Matrix, k: int, rows: int | None
) -> list[SearchResult]:
    """The top `k` chunks for one query vector, best first; `rows` is the catalog's chunk
    count, which validates the store's cached vectors."""
    # one read of the matrix: the ids and texts must be in the rows the scores were taken from
    ids, matrix = await store.matrix(rows)
    hits = await asyncio.get_running_loop().run_in_executor(None, nearest, matrix, query, k)
    if not hits:
        return []
    texts = await _texts(store, ids)
    return [SearchResult(int(ids[row]), texts[row], score) for row, score in hits]
