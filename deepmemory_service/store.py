"""A user's chunk vectors in a deeplake 3.9 dataset, through the low-level dataset API.

The layout is the one deeplake's `VectorStore` writes (tensors `id`, `text`, `embedding`,
`metadata`), so a store made here can be opened as a VectorStore later. `VectorStore`
itself is not built for local stores: its constructor calls Activeloop's API and retries
forever offline. deeplake is blocking and not safe to share across threads,
so every call runs in the default executor under the store's lock.

deeplake's own write lock is off: it is held per process for the life of the process (and
refreshed by a thread per dataset), so a second instance could never add to a user's
store. Writes are serialised instead by the user's PostgreSQL advisory lock (ingestion
runs under it), which holds across instances. For the same reason a cached matrix is
trusted only while its row count equals the catalog's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from deepmemory_service import deeplake_compat
from deepmemory_service.embedders import Matrix


class StoreError(Exception):
    """The vector store cannot be used as asked; the message says why."""


@attrs.define
class ChunkStore:
    """One user's dataset. `embedder` and `dimension` are recorded in the dataset's info."""

    path: str
    embedder: str
    dimension: int
    token: str | None = attrs.field(default=None, repr=False)
    _lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _ids: npt.NDArray[np.int64] | None = attrs.field(default=None, init=False)
    _vectors: Matrix | None = attrs.field(default=None, init=False)
    _texts: list[str] | None = attrs.field(default=None, init=False)

    @property
    def is_cloud(self) -> bool:
        return self.path.startswith("hub://")

    def _open(self, *, create: bool) -> Any:
        deeplake = deeplake_compat.load()
        creds = {"token": self.token} if self.token else {}
        if deeplake.exists(self.path, **creds):
            ds = deeplake.load(self.path, verbose=False, lock_enabled=False, **creds)
            info = dict(ds.info)
            if info.get("embedder") != self.embedder or info.get("dimension") != self.dimension:
                raise StoreError(
                    f"vector store {self.path} holds {info.get('embedder')} vectors of "
                    f"dimension {info.get('dimension')}, but the configured embedder is "
                    f"{self.embedder} ({self.dimension}); re-ingest or configure the same embedder"
                )
            return ds
        if not create:
            return None
        if not self.is_cloud:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        ds = deeplake.empty(self.path, verbose=False, lock_enabled=False, **creds)
        with ds:
            ds.create_tensor(
                "id",
                htype="text",
                create_shape_tensor=False,
                create_id_tensor=False,
                create_sample_info_tensor=False,
            )
            ds.create_tensor(
                "text",
                htype="text",
                create_shape_tensor=False,
                create_id_tensor=False,
                create_sample_info_tensor=False,
            )
            ds.create_tensor(
                "embedding",
                htype="embedding",
                dtype=np.float32,
                create_id_tensor=False,
                create_sample_info_tensor=False,
                max_chunk_size=64 * 1024 * 1024,
            )
            ds.create_tensor(
                "metadata",
                htype="json",
                create_shape_tensor=False,
                create_id_tensor=False,
                create_sample_info_tensor=False,
            )
            ds.info.update(embedder=self.embedder, dimension=self.dimension)
        return ds

    def _add(
        self,
        ids: Sequence[int],
        texts: Sequence[str],
        vectors: Matrix,
        metadata: Sequence[dict[str, Any]],
    ) -> None:
        ds = self._open(create=True)
        with ds:
            ds.extend(
                {
                    "id": [str(i) for i in ids],
                    "text": list(texts),
                    "embedding": vectors.astype(np.float32, copy=False),
                    "metadata": list(metadata),
                }
            )
        ds.flush()

    def _read(self) -> tuple[npt.NDArray[np.int64], Matrix]:
        ds = self._open(create=False)
        if ds is None or len(ds) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dimension), dtype=np.float32)
        raw_ids = ds.id.numpy(aslist=True, fetch_chunks=True)
        ids = np.asarray(raw_ids).reshape(-1).astype(np.int64)
        vectors = ds.embedding.numpy(fetch_chunks=True).astype(np.float32, copy=False)
        return ids, vectors

    async def add(
        self,
        ids: Sequence[int],
        texts: Sequence[str],
        vectors: Matrix,
        metadata: Sequence[dict[str, Any]],
    ) -> None:
        if vectors.shape != (len(ids), self.dimension):
            raise StoreError(
                f"expected vectors of shape ({len(ids)}, {self.dimension}), got {vectors.shape}"
            )
        loop = asyncio.get_running_loop()
        async with self._lock:
            await loop.run_in_executor(None, self._add, ids, texts, vectors, metadata)
            self._ids = self._vectors = None
            self._texts = None

    def _read_texts(self) -> list[str]:
        ds = self._open(create=False)
        if ds is None or len(ds) == 0:
            return []
        return [str(t) for t in ds.text.data()["value"]]

    def _fresh(self, cached: Sized | None, rows: int | None) -> bool:
        return cached is not None and rows is not None and len(cached) == rows

    async def texts(self, rows: int | None = None) -> list[str]:
        """Every chunk's text in row order (the order of `matrix()`); see `matrix` for `rows`."""
        async with self._lock:
            if not self._fresh(self._texts, rows):
                loop = asyncio.get_running_loop()
                self._texts = await loop.run_in_executor(None, self._read_texts)
            assert self._texts is not None
            return self._texts

    async def matrix(self, rows: int | None = None) -> tuple[npt.NDArray[np.int64], Matrix]:
        """All chunk ids and vectors. The cached copy serves while it has `rows` rows (the
        catalog's count: another instance may have added chunks); without `rows` the
        dataset is read again."""
        async with self._lock:
            if self._vectors is not None and self._ids is not None and self._fresh(self._ids, rows):
                return self._ids, self._vectors
            loop = asyncio.get_running_loop()
            ids, vectors = await loop.run_in_executor(None, self._read)
            self._ids, self._vectors = ids, vectors
            return ids, vectors


@attrs.define
class StoreRegistry:
    """One `ChunkStore` per user, made on first use, for the configured path and embedder."""

    path_template: str
    data_dir: str
    embedder: str
    dimension: int
    token: str | None = attrs.field(default=None, repr=False)
    _stores: dict[str, ChunkStore] = attrs.field(factory=dict, init=False)

    def path_for(self, user_id: object) -> str:
        return self.path_template.format(data_dir=self.data_dir, user_id=user_id)

    def for_user(self, user_id: object) -> ChunkStore:
        key = str(user_id)
        store = self._stores.get(key)
        if store is None:
            store = ChunkStore(self.path_for(key), self.embedder, self.dimension, self.token)
            self._stores[key] = store
        return store
