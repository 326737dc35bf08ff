"""The vector store's versions on real deeplake datasets: a local store's version folders, and
a cloud store's commits through the Activeloop stand-in, which maps hub:// to a folder. (A
store brought back in line with the catalog on its first use: service/test_store_recovery.py.)"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from deepmemory_service.storage import cpu_pool, deeplake_compat
from deepmemory_service.storage.dataset import Rows, StoreDamaged
from deepmemory_service.storage.embedders import HashingEmbedder
from deepmemory_service.storage.local_versions import LocalVersions, WriterLost
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.testing.standin_activeloop import ActiveloopStandin, make_app
from deepmemory_service.training.activeloop import use_endpoint

EMBEDDER = HashingEmbedder(dimension=64)
TOKEN = "store-versions-token"


async def rows(first: int, n: int) -> Rows:
    texts = [f"chunk {i} about topic{i} and subject{i % 3}" for i in range(first, first + n)]
    return Rows(list(range(first, first + n)), texts, await EMBEDDER.embed(texts), [{}] * n)


async def test_a_local_version_never_changes_and_unpublished_ones_are_cleared(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stores" / "user"
    store = ChunkStore(str(path), EMBEDDER.name, EMBEDDER.dimension)
    v1 = await store.append(await rows(1, 5))
    v2 = await store.append(await rows(6, 3))
    assert os.readlink(path) == f"user.versions/{v2}"  # deeplake.load(path) opens the newest
    first = await ChunkStore(str(path), EMBEDDER.name, EMBEDDER.dimension).read(v1, 5)
    assert first.ids.tolist() == [1, 2, 3, 4, 5]

    # a write that never finishes (a crash), then one that is abandoned (a failure)
    crashed = await store.begin(v2, 8, 8)
    await crashed.append(await rows(9, 4))
    abandoned = await store.begin(v2, 8, 8)
    await abandoned.append(await rows(9, 4))
    await abandoned.abandon()
    assert (await store.read(v2, 8)).ids.tolist() == list(range(1, 9))

    writer = await store.begin(v2, 8, 8)  # clears the crashed attempt and keeps v1, v2
    listed = {p.name for p in (tmp_path / "stores" / "user.versions").iterdir()}
    assert len(listed) == 3, listed  # v1, v2 and the one being written
    assert {v1, v2} < listed
    await writer.append(await rows(9, 2))
    v3 = await writer.finish()
    await store.published(v3)
    kept = sorted(p.name for p in (tmp_path / "stores" / "user.versions").iterdir())
    assert kept == sorted([v2, v3])
    assert (await store.read(v3, 10)).ids.tolist() == list(range(1, 11))
    with pytest.raises(StoreDamaged, match="is missing"):
        await store.read(v1, 5)


async def test_a_new_version_lists_its_files_as_deeplake_would(tmp_path: Path) -> None:
    """A version begun is a folder of hard links whose files are handed to the dataset's
    storage (`_link_tree`): the same as its own listing of the folder."""
    from deeplake.core.storage.local import LocalProvider

    versions = LocalVersions(str(tmp_path / "user"), EMBEDDER.name, EMBEDDER.dimension)
    base, count = None, 0
    for first in (1, 6, 9):
        writer = versions.begin(base, count, count or None)
        if base is not None:
            assert writer.ds.base_storage.files == LocalProvider(str(writer.folder)).files
        writer.append(await rows(first, 3))
        base, count = writer.finish(), count + 3
        versions.published(base)


async def test_a_write_worker_lost_in_the_middle_of_a_version_is_a_503(tmp_path: Path) -> None:
    """A local version is written over several calls to the write lane's one process; when
    that process dies between two, the upload is told to retry and nothing is published."""
    path = tmp_path / "user"
    store = ChunkStore(str(path), EMBEDDER.name, EMBEDDER.dimension)
    v1 = await store.append(await rows(1, 3))
    writer = await store.begin(v1, 3, 3)
    await writer.append(await rows(4, 2))
    pool = cpu_pool._executor(cpu_pool.WRITE)
    if not isinstance(pool, ProcessPoolExecutor):
        pytest.skip("no worker processes here: the write lane is a thread")
    for process in list(pool._processes.values()):  # type: ignore[attr-defined]
        process.kill()
    with pytest.raises(WriterLost) as lost:
        await writer.append(await rows(6, 2))
    assert lost.value.status == 503
    await writer.abandon()
    v2 = await store.append(await rows(4, 4))
    assert (await store.read(v2, 7)).ids.tolist() == list(range(1, 8))


async def test_a_store_from_before_versions_is_taken_over_when_whole(tmp_path: Path) -> None:
    path = tmp_path / "user"
    legacy = deeplake_compat.load().empty(str(path), verbose=False, lock_enabled=False)
    from deepmemory_service.storage.dataset import create_tensors, extend

    create_tensors(legacy, EMBEDDER.name, EMBEDDER.dimension)
    extend(legacy, await rows(1, 4))
    legacy.flush()
    store = ChunkStore(str(path), EMBEDDER.name, EMBEDDER.dimension)
    with pytest.raises(StoreDamaged, match="tensors of length"):
        await store.begin(None, 5, 5)  # the catalog has a chunk the store lacks
    with pytest.raises(StoreDamaged, match="not the catalog's"):
        await store.begin(None, 4, 7)
    writer = await store.begin(None, 4, 4)
    version = await writer.finish()
    await store.published(version)
    assert path.is_symlink()
    assert (await store.read(version, 4)).ids.tolist() == [1, 2, 3, 4]


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[ActiveloopStandin]:
    state = ActiveloopStandin(root=tmp_path / "hub", token=TOKEN)
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server()
    use_endpoint(str(server.make_url("")))
    try:
        yield state
    finally:
        use_endpoint(None)
        await server.close()


async def test_a_cloud_version_is_a_commit_and_an_unpublished_one_is_undone(
    hub: ActiveloopStandin,
) -> None:
    store = ChunkStore("hub://standin-org/corpus", EMBEDDER.name, EMBEDDER.dimension, TOKEN)
    assert store.is_cloud
    writer = await store.begin(None, 0, None)
    await writer.append(await rows(1, 5))
    v1 = await writer.finish()
    writer = await store.begin(v1, 5, 5)
    await writer.append(await rows(6, 3))
    v2 = await writer.finish()
    assert (await store.read(v1, 5)).ids.tolist() == [1, 2, 3, 4, 5]
    assert (await store.read(v2, 8)).ids.tolist() == list(range(1, 9))

    # written and flushed, never published: the catalog still names v2
    unpublished = await store.begin(v2, 8, 8)
    await unpublished.append(await rows(9, 4))
    await unpublished.finish()
    writer = await store.begin(v2, 8, 8)  # drops the unpublished rows
    await writer.append(await rows(30, 2))
    v3 = await writer.finish()
    reader = ChunkStore("hub://standin-org/corpus", EMBEDDER.name, EMBEDDER.dimension, TOKEN)
    read = await reader.read(v3, 10)
    assert read.ids.tolist() == [*range(1, 9), 30, 31]
    assert np.allclose(read.vectors[-2:], (await rows(30, 2)).vectors)
    assert (await reader.read(v2, 8)).ids.tolist() == list(range(1, 9))
    assert (await reader.read(v1, 5)).ids.tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(StoreDamaged, match="not the store's last"):
        await store.begin(v1, 5, 5)
