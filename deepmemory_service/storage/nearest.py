"""The nearest chunks of a user's vector store to a query vector, by cosine similarity.

The store's ids and vectors come from the search cache (`search_cache.py`, within the
memory budget); the scan runs in an executor, since on a large store it takes long enough
to stall every other request on the event loop. The results' texts are read afterwards,
for the k chunks found only: from the catalog in the service, from the store without one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
from attrs import frozen

from deepmemory_service.storage.dataset import StoreDamaged
from deepmemory_service.storage.search_cache import SearchCache, SearchVectors, nearest_rows
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.vectors import Matrix

__all__ = ["Nearest", "SearchResult", "nearest_rows", "search_in", "store_nearest"]


@frozen
class SearchResult:
    chunk_id: int
    text: str
    score: float


# the top k chunks of a user's store for one query vector, best first (a trained model
# transforms the query and searches with it)
Nearest = Callable[[Matrix, int], Awaitable[list[SearchResult]]]
# the texts of chunks, by id (a chunk not there is left out)
TextReader = Callable[[Sequence[int]], Awaitable[dict[int, str]]]
# the store's search data at the version searched
VectorReader = Callable[[], Awaitable[SearchVectors]]


async def search_in(
    read: VectorReader, texts: TextReader, query: Matrix, k: int
) -> list[SearchResult]:
    """The top `k` chunks of the data `read()` gives for one query vector, best first, with
    their texts from `texts`."""
    found = await read()
    hits = await asyncio.get_running_loop().run_in_executor(None, found.nearest, query, k)
    known = await texts([chunk_id for chunk_id, _ in hits])
    missing = [chunk_id for chunk_id, _ in hits if chunk_id not in known]
    if missing:
        # the catalog holds every chunk of a version it published
        raise StoreDamaged(f"chunks {missing[:5]} of the store are not in the catalog")
    return [SearchResult(chunk_id, known[chunk_id], score) for chunk_id, score in hits]


def store_nearest(store: ChunkStore, cache: SearchCache | None = None) -> Nearest:
    """Search of the newest version `store` knows, for a store without a catalog (tests,
    benchmarks): its texts read from the store too."""
    held = cache if cache is not None else SearchCache(2**62)

    async def nearest(query: Matrix, k: int) -> list[SearchResult]:
        version, rows = await store.newest()
        data = await held.vectors(store, version, rows)

        async def texts(chunk_ids: Sequence[int]) -> dict[int, str]:
            at = np.searchsorted(data.ids, np.asarray(chunk_ids, dtype=np.int64))
            found = await store.read_texts(version, [int(r) for r in at])
            return dict(zip(chunk_ids, found, strict=True))

        return await search_in(lambda: _ready(data), texts, query, k)

    return nearest


async def _ready(data: SearchVectors) -> SearchVectors:
    return data
