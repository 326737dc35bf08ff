"""A user's chunk vectors in deeplake 3.9, in versions that the catalog publishes.

The catalog in PostgreSQL is the truth: it names the store's published version and its row
count, and changes both in the transaction that adds the chunks. A write never changes a
published version: it makes the next one, appends there and returns its name; the catalog
then publishes it, or it is garbage. A crash or a full disk at any moment leaves the
published versions as they were, and readers, here or on another instance, read the
version the catalog names: never a half-written one.

Where versions live: a local store keeps each version as a folder (`local_versions.py`); a
cloud (hub://) store as a deeplake commit (`cloud_versions.py`); a store in a bucket
(s3://), which every instance reaches, as a deeplake commit on a branch of its own
(`object_versions.py`). All hold one dataset's layout (`dataset.py`).

deeplake is blocking and not safe to share across threads: every call runs in the default
executor, one at a time per dataset; a bucket's in a daemon thread under a deadline, its
failures named by `object_store.py` (unreachable or refused: a 503, never a rebuild).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import numpy as np
import structlog

from deepmemory_service.platform.config import StoreKind, is_cloud_path, store_kind
from deepmemory_service.storage import cpu_pool, search_file
from deepmemory_service.storage.dataset import (
    NO_SPACE,
    Held,
    Rows,
    Snapshot,
    StoreDamaged,
    StoreError,
    StoreFull,
    check_info,
    disk_full,
    read_rows,
    read_vectors,
)
from deepmemory_service.storage.object_store import ObjectStore
from deepmemory_service.storage.search_cache import SearchCache
from deepmemory_service.storage.side_files import side_file

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Writer(Protocol):
    """A version being written (blocking): appended to, then finished (made whole and
    named: the name to publish) or abandoned."""

    rows: int

    def append(self, rows: Rows) -> None: ...

    def finish(self) -> str: ...

    def abandon(self) -> None: ...


class Versions(Protocol):
    """How one kind of storage keeps a store's versions (blocking)."""

    def open(self, version: str) -> Any:
        """The dataset at `version`, read-only; `StoreDamaged` when it is not there."""
        ...

    def begin(self, base: str | None, base_rows: int, last_id: int | None) -> Writer:
        """A writer of the version after `base`, which the catalog says holds `base_rows`
        chunks up to id `last_id`; `StoreDamaged` when `base` cannot be built on."""
        ...

    def begin_empty(self) -> Writer: ...

    def published(self, version: str) -> None: ...

    def newest(self) -> str | None:
        """The newest version as far as the storage knows (for a store without a catalog)."""
        ...


@attrs.define
class StoreWriter:
    """The next version of a store. `append` rows, then `finish()` for the version's name
    (publish it in the catalog), or `abandon()`. A full disk raises `StoreFull`."""

    _writer: Writer
    _store: ChunkStore

    @property
    def rows(self) -> int:
        return self._writer.rows

    async def append(self, rows: Rows) -> None:
        _check_shape(rows, self._store.dimension)
        await self._store.blocking(self._writer.append, rows)

    async def finish(self) -> str:
        return await self._store.blocking(self._writer.finish)

    async def abandon(self) -> None:
        # no lock and no data to write: this works on a full disk and after a failed write
        await asyncio.get_running_loop().run_in_executor(None, self._writer.abandon)


@attrs.define
class WorkerWriter:
    """The next version of a local store, written in the upload worker's write lane (as
    `StoreWriter`): parts appended there while the next ones are embedded."""

    _key: str
    _store: ChunkStore
    rows: int

    async def append(self, rows: Rows) -> None:
        from deepmemory_service.storage.local_versions import append_version

        _check_shape(rows, self._store.dimension)
        await cpu_pool.run(append_version, self._key, rows)
        self.rows += len(rows.ids)

    async def finish(self) -> str:
        from deepmemory_service.storage.local_versions import finish_version

        return await cpu_pool.run(finish_version, self._key)

    async def abandon(self) -> None:
        from deepmemory_service.storage.local_versions import abandon_version

        try:
            await cpu_pool.run(abandon_version, self._key)
        except Exception as exc:  # a worker gone with it: the next write clears the folder
            log.warning("vector store version not abandoned", error=str(exc))


def _check_shape(rows: Rows, dimension: int) -> None:
    if rows.vectors.shape != (len(rows.ids), dimension):
        raise StoreError(
            f"expected vectors of shape ({len(rows.ids)}, {dimension}), got {rows.vectors.shape}"
        )


def _versions(
    path: str, token: str | None, remote: ObjectStore | None, embedder: str, dimension: int
) -> Versions:
    kind = store_kind(path)
    if kind == "hub":
        from deepmemory_service.storage.cloud_versions import CloudVersions

        return CloudVersions(path, token, embedder, dimension)
    if kind == "s3":
        from deepmemory_service.storage.object_versions import ObjectVersions

        if remote is None:
            raise ValueError(f"the s3:// store {path} needs the object store's settings")
        return ObjectVersions(path, remote, embedder, dimension)
    from deepmemory_service.storage.local_versions import LocalVersions

    return LocalVersions(path, embedder, dimension)


@attrs.define
class ChunkStore:
    """One user's store. `embedder` and `dimension` are recorded in each version's info;
    `remote` is the process's bucket access, for an s3:// store."""

    path: str
    embedder: str
    dimension: int
    token: str | None = attrs.field(default=None, repr=False)
    remote: ObjectStore | None = attrs.field(default=None, repr=False)
    _lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _kept: Versions = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._kept = _versions(self.path, self.token, self.remote, self.embedder, self.dimension)

    @property
    def is_cloud(self) -> bool:
        return is_cloud_path(self.path)

    @property
    def kind(self) -> StoreKind:
        return store_kind(self.path)

    async def blocking(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` in the executor; a full disk becomes `StoreFull`. A bucket's
        store: under the object store's deadline, unreachable or refused as a 503."""
        if self.remote is not None and self.kind == "s3":
            return await self.remote.run(self.path, call, *args)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, call, *args)
        except StoreError:
            raise
        except Exception as exc:
            if disk_full(exc):
                raise StoreFull(NO_SPACE) from exc
            raise

    async def read(self, version: str | None, rows: int) -> Snapshot:
        """The store at `version`, which the catalog says holds `rows` chunks, read whole
        (ids, vectors and texts: for training). Nothing is kept: search holds its data
        within a budget (`search_cache.py`). Raises `StoreDamaged` when it cannot be read."""
        if rows == 0:
            return Snapshot(
                None,
                np.zeros(0, dtype=np.int64),
                np.zeros((0, self.dimension), dtype=np.float32),
                (),
            )
        if version is None:
            raise StoreDamaged("the catalog has chunks but names no published version")
        async with self._lock:
            return await self.blocking(self._read, version, rows)

    def _read(self, version: str, rows: int) -> Snapshot:
        ds = self._kept.open(version)
        check_info(ds, self.embedder, self.dimension)
        return read_rows(ds, version, rows, None)

    async def read_vectors(
        self,
        version: str | None,
        rows: int,
        base: Held | None,
        dtype: type[np.floating[Any]],
        filed: int = 0,
    ) -> tuple[Held, int]:
        """The chunk ids and vectors (as `dtype`) of the store at `version`, which the
        catalog says holds `rows` chunks; read on from `base` (the ids and vectors of an
        earlier version, of which the search file holds `filed` rows) when the version
        begins with its rows, else from the search file kept with the store when there is
        one fit to use (float16 only: `search_file.py`). With the rows the search file
        holds afterwards: written again when enough came since. `StoreDamaged` when the
        version cannot be read."""
        if rows == 0:
            empty = np.zeros(0, dtype=np.int64), np.zeros((0, self.dimension), dtype=dtype)
            return empty, 0
        if version is None:
            raise StoreDamaged("the catalog has chunks but names no published version")
        async with self._lock:
            return await self.blocking(self._read_vectors, version, rows, base, dtype, filed)

    def _read_vectors(
        self,
        version: str,
        rows: int,
        base: Held | None,
        dtype: type[np.floating[Any]],
        filed: int,
    ) -> tuple[Held, int]:
        kept = dtype is np.float16 and self.kind != "hub"
        file = side_file(self, search_file.NAME) if kept else None
        if base is None:
            filed = 0
            if file is not None:
                base = search_file.read(file, self.embedder, self.dimension)
                filed = len(base[0]) if base is not None else 0
        ds = self._kept.open(version)
        check_info(ds, self.embedder, self.dimension)
        held, start = read_vectors(ds, version, rows, base, dtype, self.dimension)
        if start == 0:
            filed = 0  # what was held or filed is not this version's beginning
        if file is not None and search_file.worth_writing(rows, filed):
            try:
                search_file.write(file, self.embedder, self.dimension, held)
                filed = rows
            except StoreError:
                raise  # a bucket that does not answer: this read fails as the others would
            except Exception as exc:  # a full disk, say: search goes on from the store
                log.warning("search file not written", error=f"{type(exc).__name__}: {exc}")
        return held, filed

    async def write(self, base: str | None, base_rows: int, last_id: int | None, rows: Rows) -> str:
        """The version after the catalog's `base` (`base_rows` chunks, up to id `last_id`)
        with `rows` appended, made whole; its name, to publish. Under the user's lock.
        `StoreDamaged`: rebuild with `begin_empty`."""
        writer = await self.begin(base, base_rows, last_id)
        try:
            await writer.append(rows)
            return await writer.finish()
        except BaseException:
            await writer.abandon()
            raise

    async def begin(
        self, base: str | None, base_rows: int, last_id: int | None
    ) -> StoreWriter | WorkerWriter:
        """The next version after the catalog's `base` (`base_rows` chunks, up to id
        `last_id`). Under the user's lock. `StoreDamaged`: rebuild with `begin_empty`. A
        local store's is written by the upload worker's write lane (`cpu_pool`)."""
        if self.kind == "local":
            from deepmemory_service.storage.local_versions import begin_version

            key = await cpu_pool.run(
                begin_version, self.path, self.embedder, self.dimension, base, base_rows, last_id
            )
            return WorkerWriter(key, self, base_rows)
        return StoreWriter(await self.blocking(self._kept.begin, base, base_rows, last_id), self)

    async def begin_empty(self) -> StoreWriter:
        """A version that starts empty (a rebuild from the catalog). Under the user's lock."""
        return StoreWriter(await self.blocking(self._kept.begin_empty), self)

    async def published(self, version: str) -> None:
        """After the catalog published `version` (tidying; a failure only costs space)."""
        if self.kind == "s3":
            try:
                await self.blocking(self._kept.published, version)
            except StoreError as exc:  # the deadline: the upload it follows is done
                log.warning("vector store not tidied", reason=exc.detail)
            return
        await asyncio.get_running_loop().run_in_executor(None, self._kept.published, version)

    # for a store's only writer, without a catalog (tests, benchmarks)

    async def read_texts(self, version: str | None, rows: Sequence[int]) -> list[str]:
        """The texts of `rows` (row numbers) of the store at `version` (for a store without
        a catalog: the service reads texts from the catalog)."""
        if not rows:
            return []
        if version is None:
            raise StoreDamaged("texts asked of a store with no version")
        async with self._lock:
            return await self.blocking(self._read_texts, version, list(rows))

    def _read_texts(self, version: str, rows: list[int]) -> list[str]:
        ds = self._kept.open(version)
        return [str(ds.text[row].data()["value"]) for row in rows]

    def _newest(self) -> tuple[str | None, int]:
        version = self._kept.newest()
        return version, len(self._kept.open(version)) if version else 0

    async def newest(self) -> tuple[str | None, int]:
        """The newest version as far as the storage knows, and its rows."""
        return await self.blocking(self._newest)

    async def latest(self) -> Snapshot:
        """The newest version as far as the storage knows. The service reads the
        catalog's version with `read`."""
        version, rows = await self.newest()
        return await self.read(version, rows)

    async def append(self, rows: Rows) -> str:
        """A version after the newest with `rows` appended, published; returns it."""
        base, base_rows = await self.blocking(self._newest)
        version = await self.write(base, base_rows, None, rows)
        await self.published(version)
        return version


@attrs.define
class StoreRegistry:
    """One `ChunkStore` per user, made on first use, for the configured path and embedder."""

    path_for: Callable[[object], str]
    embedder: str
    dimension: int
    token: str | None = attrs.field(default=None, repr=False)
    remote: ObjectStore | None = attrs.field(default=None, repr=False)
    # users' search data, within the memory budget (the default's, unless configured)
    search: SearchCache = attrs.field(factory=lambda: SearchCache(2048 * 2**20), repr=False)
    _stores: dict[str, ChunkStore] = attrs.field(factory=dict, init=False)

    def for_user(self, user_id: object) -> ChunkStore:
        key = str(user_id)
        store = self._stores.get(key)
        if store is None:
            store = ChunkStore(
                self.path_for(key), self.embedder, self.dimension, self.token, self.remote
            )
            self._stores[key] = store
        return store
