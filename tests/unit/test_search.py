"""Search over a real deeplake store on disk: the versions the catalog names, read once each."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepmemory_service.api.search import search_chunks
from deepmemory_service.storage.dataset import Rows, Snapshot
from deepmemory_service.storage.embedders import HashingEmbedder
from deepmemory_service.storage.store import ChunkStore
from tests.conftest import paragraph


async def test_a_version_is_read_once_and_a_newer_one_from_where_the_last_read_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[str, int, str | None]] = []
    read = ChunkStore._read

    def counted(self: ChunkStore, version: str, rows: int, cached: Snapshot | None) -> Snapshot:
        reads.append((version, rows, cached.version if cached else None))
        return read(self, version, rows, cached)

    monkeypatch.setattr(ChunkStore, "_read", counted)
    embedder = HashingEmbedder(dimension=256)
    path = str(tmp_path / "user")
    store = ChunkStore(path, embedder.name, embedder.dimension)
    # ids unlike row numbers, so a row taken for an id shows
    ids = [10, 20, 30, 40, 50]
    texts = {i: paragraph(n) for n, i in enumerate(ids)}
    first = await store.append(
        Rows(ids, list(texts.values()), await embedder.embed(list(texts.values())), [{}] * 5)
    )

    async def search(query: str, version: str, rows: int) -> list[tuple[int, str]]:
        found = await search_chunks(
            store, embedder, query, 3, read=lambda: store.read(version, rows)
        )
        return [(r.chunk_id, r.text) for r in found]

    found = await search("component3 module3", first, 5)
    assert found[0] == (40, texts[40])
    assert all(text == texts[i] for i, text in found)
    assert (await search("component1", first, 5))[0] == (20, texts[20])
    assert len(reads) == 1

    # another writer (another instance) publishes a version with one more chunk
    zebra = "Zebras and quokkas graze beside the narwhal lagoon."
    other = ChunkStore(path, embedder.name, embedder.dimension)
    second = await other.append(Rows([60], [zebra], await embedder.embed([zebra]), [{}]))
    # the catalog still names the first version: its readers see it as it was
    assert 60 not in dict(await search("zebras narwhal", first, 5))
    assert len(reads) == 1
    assert (await search("zebras narwhal", second, 6))[0] == (60, zebra)
    # the newer version was read on from the first one's rows; the whole is as a fresh read
    assert reads == [(first, 5, None), (second, 6, first)]
    grown = await store.read(second, 6)
    fresh = await ChunkStore(path, embedder.name, embedder.dimension).read(second, 6)
    assert grown.ids.tolist() == fresh.ids.tolist() == [*ids, 60]
    assert (grown.vectors == fresh.vectors).all()
    assert list(grown.texts) == list(fresh.texts) == [*texts.values(), zebra]
