"""A large store's search file (its ids and float16 vectors kept with it): a load reads it and
only the rows the store gained since; a file that is not the version's beginning (garbage,
cut short, of a version never published) is ignored and written again; and an s3:// store's
file is in the bucket, where another instance loads from it. Real deeplake stores, the
suite's own S3 server (moto)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepmemory_service.storage import dataset, search_file
from deepmemory_service.storage.dataset import Held, Rows
from deepmemory_service.storage.embedders import HashingEmbedder
from deepmemory_service.storage.nearest import store_nearest
from deepmemory_service.storage.search_cache import SearchCache
from deepmemory_service.storage.side_files import side_file
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.testing.object_store import ObjectStoreServer
from tests.conftest import paragraph
from tests.service.test_object_store import instance_store

EMBEDDER = HashingEmbedder(dimension=256)


def counted_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows each read of a store's vectors was given to read on from (0: none)."""
    reads: list[int] = []
    read = dataset.read_vectors

    def counted(ds: object, version: str, rows: int, base: Held | None, *args: object) -> object:
        reads.append(len(base[0]) if base is not None else 0)
        return read(ds, version, rows, base, *args)  # type: ignore[arg-type]

    monkeypatch.setattr("deepmemory_service.storage.store.read_vectors", counted)
    return reads


async def rows(first: int, n: int) -> Rows:
    texts = [paragraph(i) for i in range(first, first + n)]
    return Rows(list(range(first, first + n)), texts, await EMBEDDER.embed(texts), [{}] * n)


def compact() -> SearchCache:
    """A cache of another instance (or after an eviction): nothing held; stores of more
    than 100 chunks as float16, so with a search file."""
    return SearchCache(2**30, compact_above=100)


async def test_a_load_reads_the_search_file_and_only_the_rows_since_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore(str(tmp_path / "user"), EMBEDDER.name, EMBEDDER.dimension)
    first = await store.append(await rows(1, 400))
    reads = counted_reads(monkeypatch)
    held = await compact().vectors(store, first, 400)
    assert reads == [0]  # no file yet: the store read whole, and the file written
    assert (held.filed, held.compact) == (400, True)
    assert (tmp_path / "user.search").exists()

    second = await store.append(await rows(401, 30))  # less than a tenth: not written again
    loaded = await compact().vectors(store, second, 430)
    assert reads == [0, 400]  # the file's 400 rows, then the store's 30 since
    assert loaded.filed == 400
    whole = await store.read(second, 430)
    assert loaded.ids.tolist() == whole.ids.tolist() == list(range(1, 431))
    assert (loaded.vectors == whole.vectors.astype(np.float16)).all()

    # the search answers from the file are the store's
    query = await EMBEDDER.embed([paragraph(415)])
    assert loaded.nearest(query, 1)[0][0] == 415
    found = await store_nearest(store, compact())(query, 3)
    assert found[0].chunk_id == 415
    assert found[0].text == paragraph(415)


async def test_a_search_file_that_is_not_the_versions_beginning_is_ignored_and_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore(str(tmp_path / "user"), EMBEDDER.name, EMBEDDER.dimension)
    version = await store.append(await rows(1, 400))
    whole = await store.read(version, 400)
    file = side_file(store, search_file.NAME)
    vectors = whole.vectors.astype(np.float16)
    reads = counted_reads(monkeypatch)
    other = await rows(1001, 450)
    written = [
        b"not a search file",
        # cut short (a torn copy; the service writes beside and renames)
        b"".join(bytes(p) for p in search_file.encode("hashing", 256, whole.ids, vectors))[:-10],
        # another embedder's
        b"".join(bytes(p) for p in search_file.encode("minilm", 256, whole.ids, vectors)),
        # of a version never published: more rows than the catalog's version
        b"".join(
            bytes(p)
            for p in search_file.encode(
                "hashing",
                256,
                np.arange(1, 451),
                np.concatenate([vectors, other.vectors[:50].astype(np.float16)]),
            )
        ),
        # of a version never published: other chunks (the catalog never reuses an id)
        b"".join(
            bytes(p)
            for p in search_file.encode(
                "hashing", 256, np.arange(1001, 1401), other.vectors[:400].astype(np.float16)
            )
        ),
    ]
    query = await EMBEDDER.embed([paragraph(123)])
    for data in written:
        file.write(data)
        held = await compact().vectors(store, version, 400)
        assert held.ids.tolist() == whole.ids.tolist()
        assert (held.vectors == vectors).all()
        assert held.nearest(query, 1)[0][0] == 123
        # written again from the store: the next load reads it, and searches with it
        assert held.filed == 400
        again = await compact().vectors(store, version, 400)
        assert again.filed == 400
        assert again.nearest(query, 1)[0][0] == 123
    # the first three are not files of this embedder (nothing to read on from); the last two
    # are, and are refused by the version (450 rows of 400; another id at row 400): each
    # read whole from the store, then a load from the file written again
    assert reads == [0, 400, 0, 400, 0, 400, 450, 400, 400, 400]


async def test_an_s3_stores_search_file_is_in_the_bucket_for_every_instance(
    s3: ObjectStoreServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = f"s3://{bucket}/stores/u1"
    writer = instance_store(path)
    texts = [paragraph(i) for i in range(150)]
    vectors = (await HashingEmbedder(dimension=16).embed(texts)).astype(np.float32)
    version = await writer.append(Rows(list(range(1, 151)), texts, vectors, [{}] * 150))
    reads = counted_reads(monkeypatch)
    first = await compact().vectors(instance_store(path), version, 150)
    assert first.filed == 150
    assert f"stores/u1/{search_file.NAME}" in s3.keys(bucket, "stores/u1/")
    # another instance, its own client and cache: loads from the bucket's file
    other = await compact().vectors(instance_store(path), version, 150)
    assert reads == [0, 150]
    assert other.ids.tolist() == list(range(1, 151))
    assert (other.vectors == vectors.astype(np.float16)).all()
    assert other.nearest(vectors[41:42], 1)[0][0] == 42
