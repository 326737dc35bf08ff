"""Users' search data within one memory budget: for each user searched lately, the chunk ids
and vectors of the store version searched, the least recently searched evicted first.

An idle user costs nothing: their data is read again from the store (the version the
catalog names) when they search next; a large store's from its search file and the rows
added since (`search_file.py`). A newer version of data held is read on from the
rows held, since a version only appends to the one it was made from. Texts are never held:
a search reads its results' texts from the catalog (`api/search.py`).

A store of more than `compact_above` chunks is held as float16: half the memory, scanned
exactly with usearch's SIMD kernels (faster than numpy's float32 product, which needs BLAS),
its best candidates then re-scored in float32 arithmetic. Smaller stores stay float32 and
are scanned by numpy. Why a scan and not a graph index (HNSW): on the hashing embedder's
vectors and short queries, usearch's HNSW found 0.59 to 0.79 of the exact top 10 (20,000
chunks, ef 64 to 256, float16 and int8 alike), where the target is 0.99; a compact exact
scan finds them all (`scripts/bench_search`).

The budget counts the arrays held. A load first evicts what the new data needs; data
larger than the whole budget is searched but not kept. A search holds the data it scans
while it scans, so data evicted meanwhile is freed when that search ends.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, Protocol

import attrs
import numpy as np
import numpy.typing as npt

from deepmemory_service.platform.memory import release_free_memory
from deepmemory_service.storage.dataset import Held
from deepmemory_service.vectors import Matrix

# candidates of a compact scan re-scored in float32 arithmetic beyond the k asked for
RESCORE_EXTRA = 16


def nearest_rows(vectors: Matrix, query: Matrix, k: int) -> list[tuple[int, float]]:
    """The `k` rows of `vectors` nearest the one `query` row by cosine similarity (the rows
    and the query normalised), best first, as (row, score)."""
    scores = (query @ vectors.T)[0]
    k = min(k, len(scores))
    if k == 0:
        return []
    top = np.argpartition(-scores, k - 1)[:k]
    return [(int(r), float(scores[r])) for r in top[np.argsort(-scores[top], kind="stable")]]


def compact_nearest_rows(
    vectors: npt.NDArray[np.float16], query: Matrix, k: int, threads: int
) -> list[tuple[int, float]]:
    """`nearest_rows` of float16 `vectors`: an exact SIMD scan for the best `k` plus a few,
    those re-scored in float32 arithmetic (so the order is that of the float16 rows' true
    products, not of the scan's accumulation)."""
    from usearch.compiled import MetricKind
    from usearch.index import search

    if len(vectors) == 0 or k <= 0:
        return []
    pool = min(len(vectors), k + RESCORE_EXTRA)
    found = search(
        vectors, query[0].astype(np.float16), pool, MetricKind.IP, exact=True, threads=threads
    )
    candidates = np.asarray(found.keys, dtype=np.int64).reshape(-1)[:pool]
    scores = vectors[candidates].astype(np.float32) @ query[0]
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(candidates[i]), float(scores[i])) for i in order]


class VectorSource(Protocol):
    """A store as the cache reads it (`ChunkStore`)."""

    @property
    def path(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    async def read_vectors(
        self,
        version: str | None,
        rows: int,
        base: Held | None,
        dtype: type[np.floating[Any]],
        filed: int = 0,
    ) -> tuple[Held, int]: ...


@attrs.frozen
class SearchVectors:
    """One store version's chunk ids and vectors (float32, or float16 when compact), row
    for row."""

    version: str | None
    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[Any]
    threads: int = 1
    # of these rows, those the store's search file holds (`search_file.py`)
    filed: int = 0

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.vectors.nbytes)

    @property
    def compact(self) -> bool:
        return bool(self.vectors.dtype == np.float16)

    def nearest(self, query: Matrix, k: int) -> list[tuple[int, float]]:
        """The `k` chunks nearest `query` (one normalised row), best first, as
        (chunk id, cosine similarity). Blocking: run it in an executor."""
        if self.compact:
            hits = compact_nearest_rows(self.vectors, query, k, self.threads)
        else:
            hits = nearest_rows(self.vectors, query, k)
        return [(int(self.ids[row]), score) for row, score in hits]


@attrs.frozen
class CacheStats:
    budget_bytes: int
    bytes: int
    users: int
    hits: int
    misses: int
    evictions: int
    # loads larger than the whole budget: searched, not kept
    too_large: int

    def as_json(self) -> dict[str, int]:
        return attrs.asdict(self)


@attrs.define
class SearchCache:
    """Users' `SearchVectors` within `budget_bytes`, least recently searched evicted."""

    budget_bytes: int
    compact_above: int = 20000
    threads: int = 2
    _held: OrderedDict[str, SearchVectors] = attrs.field(factory=OrderedDict, init=False)
    _locks: dict[str, asyncio.Lock] = attrs.field(factory=dict, init=False)
    _bytes: int = attrs.field(default=0, init=False)
    hits: int = attrs.field(default=0, init=False)
    misses: int = attrs.field(default=0, init=False)
    evictions: int = attrs.field(default=0, init=False)
    too_large: int = attrs.field(default=0, init=False)

    def stats(self) -> CacheStats:
        return CacheStats(
            self.budget_bytes,
            self._bytes,
            len(self._held),
            self.hits,
            self.misses,
            self.evictions,
            self.too_large,
        )

    def held(self, store: VectorSource) -> SearchVectors | None:
        """What is held of `store` (for tests and the debug view); not a use."""
        return self._held.get(store.path)

    async def vectors(self, store: VectorSource, version: str | None, rows: int) -> SearchVectors:
        """The store at `version` (which the catalog says holds `rows` chunks), held or read;
        `StoreDamaged` when it cannot be read."""
        key = store.path
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            held = self._held.get(key)
            if held is not None and held.version == version and held.rows == rows:
                self.hits += 1
                self._held.move_to_end(key)
                return held
            self.misses += 1
            dtype = np.float16 if rows > self.compact_above else np.float32
            base = held if held is not None and held.rows <= rows else None
            # an old version's arrays go once the new ones are made: counted until then
            self._make_room(
                _size(rows, store.dimension, dtype), keep=key if held is not None else None
            )
            (ids, vectors), filed = await store.read_vectors(
                version,
                rows,
                (base.ids, base.vectors) if base is not None else None,
                dtype,
                base.filed if base is not None else 0,
            )
            found = SearchVectors(version, ids, vectors, self.threads, filed)
            self._drop(key)
            if found.nbytes <= self.budget_bytes:
                self._make_room(found.nbytes, keep=None)
                self._held[key] = found
                self._bytes += found.nbytes
            else:
                self.too_large += 1
            # what the read used, and what was evicted, back to the system: else the
            # process keeps it (glibc's arenas), and the budget would not bound its size
            await asyncio.get_running_loop().run_in_executor(None, release_free_memory)
            return found

    def _drop(self, key: str) -> None:
        gone = self._held.pop(key, None)
        if gone is not None:
            self._bytes -= gone.nbytes

    def _make_room(self, wanted: int, keep: str | None) -> None:
        """Evicts the least recently searched until `wanted` more bytes fit (never `keep`)."""
        for key in list(self._held):
            if self._bytes + wanted <= self.budget_bytes:
                return
            if key == keep:
                continue
            self._drop(key)
            self.evictions += 1
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                del self._locks[key]


def _size(rows: int, dimension: int, dtype: type[np.floating[Any]]) -> int:
    return rows * (dimension * np.dtype(dtype).itemsize + np.dtype(np.int64).itemsize)
