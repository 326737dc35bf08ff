"""Search over a real deeplake dataset on disk: the cached vectors, and when they are read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from deepmemory_service.embedders import HashingEmbedder, Matrix
from deepmemory_service.search import search_chunks
from deepmemory_service.store import ChunkStore
from tests.conftest import paragraph


async def test_a_search_reads_the_vectors_at_most_once_and_only_when_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    read = ChunkStore._read

    def counted(self: ChunkStore) -> tuple[npt.NDArray[np.int64], Matrix]:
        nonlocal reads
        reads += 1
        return read(self)

    monkeypatch.setattr(ChunkStore, "_read", counted)
    embedder = HashingEmbedder(dimension=256)
    path = str(tmp_path / "user")
    store = ChunkStore(path, embedder.name, embedder.dimension)
    # ids unlike row numbers, so a row taken for an id shows
    ids = [10, 20, 30, 40, 50]
    texts = {i: paragraph(n) for n, i in enumerate(ids)}
    await store.add(ids, list(texts.values()), await embedder.embed(list(texts.values())), [{}] * 5)

    async def search(query: str, rows: int | None) -> list[tuple[int, str]]:
        found = await search_chunks(store, embedder, query, 3, rows=rows)
        return [(r.chunk_id, r.text) for r in found]

    # without the catalog's count the dataset is read, once
    found = await search("component3 module3", rows=None)
    assert found[0] == (40, texts[40])
    assert all(text == texts[i] for i, text in found)
    assert reads == 1
    # the count matches the cache: no read
    assert (await search("component1", rows=5))[0] == (20, texts[20])
    assert reads == 1

    # another instance adds a chunk: the catalog's count is ahead of the cache
    zebra = "Zebras and quokkas graze beside the narwhal lagoon."
    other = ChunkStore(path, embedder.name, embedder.dimension)
    await other.add([60], [zebra], await embedder.embed([zebra]), [{}])
    assert 60 not in dict(await search("zebras narwhal", rows=5))
    assert reads == 1
    assert (await search("zebras narwhal", rows=6))[0] == (60, zebra)
    assert reads == 2
    # the store lags the catalog: every search reads, once
    await search("zebras narwhal", rows=7)
    assert reads == 3
