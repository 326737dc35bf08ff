"""Search over real deeplake stores on disk through the search cache: the versions the catalog
names, read once each and on from the rows held; users' data within the memory budget, the
least recently searched evicted; float16 scans above the size setting, float32 below, with
the same results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepmemory_service.api.search import search_chunks
from deepmemory_service.storage import dataset
from deepmemory_service.storage.dataset import Held, Rows
from deepmemory_service.storage.embedders import HashingEmbedder
from deepmemory_service.storage.nearest import store_nearest
from deepmemory_service.storage.search_cache import SearchCache
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.training.adapter import Adapter, Weights
from deepmemory_service.training.local import LocalQueryModel
from tests.conftest import paragraph

EMBEDDER = HashingEmbedder(dimension=256)


def counted_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """(version, rows, rows held before) of each read of a store's vectors."""
    reads: list[tuple[str, int, int]] = []
    read = dataset.read_vectors

    def counted(ds: object, version: str, rows: int, base: Held | None, *args: object) -> Held:
        reads.append((version, rows, len(base[0]) if base is not None else 0))
        return read(ds, version, rows, base, *args)  # type: ignore[arg-type]

    monkeypatch.setattr("deepmemory_service.storage.store.read_vectors", counted)
    return reads


async def make_store(path: Path, ids: list[int], texts: list[str]) -> tuple[ChunkStore, str]:
    store = ChunkStore(str(path), EMBEDDER.name, EMBEDDER.dimension)
    version = await store.append(Rows(ids, texts, await EMBEDDER.embed(texts), [{}] * len(ids)))
    return store, version


async def test_a_version_is_read_once_and_a_newer_one_from_the_rows_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counted_reads(monkeypatch)
    # ids unlike row numbers, so a row taken for an id shows
    ids = [10, 20, 30, 40, 50]
    texts = {i: paragraph(n) for n, i in enumerate(ids)}
    store, first = await make_store(tmp_path / "user", ids, list(texts.values()))
    cache = SearchCache(2**30)
    nearest = store_nearest(store, cache)

    async def search(query: str) -> list[tuple[int, str]]:
        found = await search_chunks(store, EMBEDDER, query, 3, nearest=nearest)
        return [(r.chunk_id, r.text) for r in found]

    found = await search("component3 module3")
    assert found[0] == (40, texts[40])
    assert all(text == texts[i] for i, text in found)
    assert (await search("component1"))[0] == (20, texts[20])
    assert reads == [(first, 5, 0)]
    assert cache.stats().hits == 1

    # another writer (another instance) publishes a version with one more chunk
    zebra = "Zebras and quokkas graze beside the narwhal lagoon."
    other = ChunkStore(str(tmp_path / "user"), EMBEDDER.name, EMBEDDER.dimension)
    second = await other.append(Rows([60], [zebra], await EMBEDDER.embed([zebra]), [{}]))
    assert (await search("zebras narwhal"))[0] == (60, zebra)
    # the newer version was read on from the first one's rows; the whole is as a fresh read
    assert reads == [(first, 5, 0), (second, 6, 5)]
    held = cache.held(store)
    assert held is not None
    assert held.version == second
    fresh = await other.read(second, 6)
    assert held.ids.tolist() == fresh.ids.tolist() == [*ids, 60]
    assert (held.vectors == fresh.vectors).all()
    # one user's data held, of its size
    stats = cache.stats()
    assert (stats.users, stats.bytes) == (1, held.nbytes)


async def test_users_are_held_within_the_budget_the_least_recently_searched_evicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = counted_reads(monkeypatch)
    stores = []
    for u in range(3):
        texts = [paragraph(u * 100 + i) for i in range(40)]
        stores.append(await make_store(tmp_path / f"user{u}", list(range(1, 41)), texts))
    one_user = 40 * (EMBEDDER.dimension * 4 + 8)
    cache = SearchCache(2 * one_user + one_user // 2)  # two users fit, three do not
    query = await EMBEDDER.embed(["component105 module0"])

    async def search(u: int) -> int:
        store, version = stores[u]
        data = await cache.vectors(store, version, 40)
        return data.nearest(query, 1)[0][0]

    for u in (0, 1, 0, 2):  # user 1 is then the least recently searched
        await search(u)
        assert cache.stats().bytes <= cache.budget_bytes
    assert [cache.held(s) is not None for s, _ in stores] == [True, False, True]
    stats = cache.stats()
    assert (stats.users, stats.bytes) == (2, 2 * one_user)
    assert (stats.hits, stats.misses, stats.evictions) == (1, 3, 1)
    assert len(reads) == 3

    # the evicted user searches again: read again from the store, with the same answer
    before = await search(0)
    assert await search(1) == 6  # user 1's chunk of "component105": id 6
    assert len(reads) == 4
    assert cache.stats().evictions == 2
    assert await search(0) == before

    # data larger than the whole budget is searched, never kept (nor does it evict)
    small = SearchCache(one_user // 2)
    store, version = stores[1]
    assert (await small.vectors(store, version, 40)).nearest(query, 1)[0][0] == 6
    assert (small.stats().users, small.stats().bytes, small.stats().too_large) == (0, 0, 1)


async def test_a_store_above_the_size_setting_is_searched_as_float16_with_the_same_results(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(3000)]
    weights = 1 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    texts = [" ".join(rng.choice(words, int(rng.integers(20, 80)), p=weights)) for _ in range(3000)]
    store, version = await make_store(tmp_path / "user", list(range(1, 3001)), texts)
    exact = SearchCache(2**30, compact_above=10_000)
    compact = SearchCache(2**30, compact_above=1000)
    plain = await exact.vectors(store, version, 3000)
    small = await compact.vectors(store, version, 3000)
    assert plain.vectors.dtype == np.float32
    assert small.vectors.dtype == np.float16
    assert small.nbytes < plain.nbytes * 0.6
    queries = [" ".join(t.split()[s : s + 4]) for t, s in zip(texts[::60], range(50), strict=True)]
    agree = 0
    for vector in await EMBEDDER.embed(queries):
        want = plain.nearest(vector[None, :], 10)
        got = small.nearest(vector[None, :], 10)
        # float16 rows: scores within their rounding of float32's
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=2e-3)
        # chunks of equal scores are the same answer (ties are many in word-hash vectors)
        exact = plain.vectors @ vector
        agree += sum(exact[c - 1] >= want[-1][1] - 1e-6 for c, _ in got)
    assert agree / (10 * len(queries)) >= 0.99


async def test_deep_memory_transforms_the_query_and_the_float16_scan_serves_it(
    tmp_path: Path,
) -> None:
    """The local trainer's adapter changes only the query: a large store's float16 data
    answers it as float32 data does."""
    texts = [paragraph(i) for i in range(400)]
    store, _ = await make_store(tmp_path / "user", list(range(1, 401)), texts)
    rng = np.random.default_rng(3)
    d = EMBEDDER.dimension
    weights = Weights(
        rng.normal(0, 0.3, d).astype(np.float32),
        np.eye(d, dtype=np.float32)[:, :16],
        rng.normal(0, 0.05, (16, d)).astype(np.float32),
    )
    model = LocalQueryModel(Adapter(weights, EMBEDDER.name, "run"), store)
    exact = store_nearest(store, SearchCache(2**30, compact_above=10_000))
    compact = store_nearest(store, SearchCache(2**30, compact_above=100))
    for query in ("component42 module2", "Section 7 detail", "module4 interaction"):
        vector = await EMBEDDER.embed([query])
        want = await model.search(vector, 5, exact)
        got = await model.search(vector, 5, compact)
        assert [r.chunk_id for r in got] == [r.chunk_id for r in want]
        assert [r.text for r in got] == [texts[r.chunk_id - 1] for r in got]
        assert np.allclose([r.score for r in got], [r.score for r in want], atol=2e-3)
        # and the model's query is not the plain one: its answer differs from plain search
        plain = await exact(vector, 5)
        assert [r.score for r in plain] != [r.score for r in want]
