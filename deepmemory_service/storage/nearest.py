"""The nearest chunks of a user's vector store to a query vector, by cosine similarity.

The corpus-wide matrix product runs in an executor: on a large store it takes long enough
to stall every other request on the event loop."""

from __future__ import annotations

import asyncio

import numpy as np
from attrs import frozen

from deepmemory_service.storage.dataset import CorpusReader
from deepmemory_service.vectors import Matrix


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


async def nearest_chunks(corpus: CorpusReader, query: Matrix, k: int) -> list[SearchResult]:
    """The top `k` chunks of `corpus()` (the store at the catalog's version) for one query
    vector, best first."""
    # one snapshot: the ids and texts are those of the rows the scores were taken from
    found = await corpus()
    hits = await asyncio.get_running_loop().run_in_executor(None, nearest, found.vectors, query, k)
    return [SearchResult(int(found.ids[row]), found.texts[row], score) for row, score in hits]
