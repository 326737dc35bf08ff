"""One dataset of a user's vector store, wherever its versions live: the layout deeplake's
`VectorStore` writes (tensors `id`, `text`, `embedding`, `metadata`), rows appended and read
whole, the checks that a version is whole, and what a store's failures are called.

deeplake is blocking and not safe to share across threads: these functions run in an
executor (or the upload worker process), one at a time per dataset.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from deepmemory_service.errors import ServiceError
from deepmemory_service.vectors import Matrix

TENSORS = ("id", "text", "embedding", "metadata")
NO_SPACE = "No space left on the disk of this user's vector store; nothing was stored"


class StoreError(ServiceError):
    """The vector store cannot do what was asked; the detail is fit for the client (it
    names no server path)."""

    status = 409


class EmbedderMismatch(StoreError):
    """The store holds vectors of another embedder than the configured one."""


class StoreFull(StoreError):
    """The disk under the store is full: the write was not made."""

    status = 507


class StoreDamaged(Exception):
    """The version the catalog names is missing or unreadable, or a store from before
    versions is not whole: it is rebuilt from the catalog. The message is for the log."""


def check_embedder(holds: str, holds_dimension: int, name: str, dimension: int) -> None:
    """The one check that a store's vectors and the configured embedder agree."""
    if holds != name or holds_dimension != dimension:
        raise EmbedderMismatch(
            f"this user's vector store holds {holds} vectors of dimension {holds_dimension}, "
            f"but the configured embedder is {name} ({dimension}); re-ingest or configure "
            "the same embedder"
        )


@attrs.frozen
class Rows:
    """Chunks to append: ids (the catalog's), texts, vectors and metadata, row for row."""

    ids: Sequence[int]
    texts: Sequence[str]
    vectors: Matrix
    metadata: Sequence[dict[str, Any]]


@attrs.frozen
class Snapshot:
    """One version of a store, read whole: row i is chunk `ids[i]`."""

    version: str | None
    ids: npt.NDArray[np.int64]
    vectors: Matrix
    texts: Sequence[str]

    @property
    def rows(self) -> int:
        return len(self.ids)


# the store at the catalog's version, read when wanted
CorpusReader = Callable[[], Awaitable[Snapshot]]


_BARE = {"create_id_tensor": False, "create_sample_info_tensor": False}
# deeplake fills a chunk to half its maximum, and an append rewrites a tensor's last chunk
# whole: a version's write (and its fsync) costs the upload's rows plus up to one chunk
# per tensor. Chunks of 2 MB (text, metadata), 0.5 MB (ids) and 4 MB (vectors: ~1,000 rows of
# 1,024 dimensions) keep that near the upload's own size however large the store (with
# deeplake's defaults, up to 32 MB of vectors and 8 MB of text were rewritten each time,
# and the ids' one chunk grew with the store). Stores made before keep their chunks.
_MB = 2**20
_TENSOR_ARGS: dict[str, dict[str, Any]] = {
    "id": {"htype": "text", "create_shape_tensor": False, "max_chunk_size": _MB, **_BARE},
    "text": {"htype": "text", "create_shape_tensor": False, "max_chunk_size": 4 * _MB, **_BARE},
    "embedding": {
        "htype": "embedding",
        "dtype": np.float32,
        "max_chunk_size": 8 * _MB,
        **_BARE,
    },
    "metadata": {
        "htype": "json",
        "create_shape_tensor": False,
        "max_chunk_size": 4 * _MB,
        **_BARE,
    },
}


def create_tensors(ds: Any, embedder: str, dimension: int) -> None:
    with ds:
        for name in TENSORS:
            ds.create_tensor(name, **_TENSOR_ARGS[name])
        ds.info.update(embedder=embedder, dimension=dimension)


def check_info(ds: Any, embedder: str, dimension: int) -> None:
    info = dict(ds.info)
    check_embedder(str(info.get("embedder")), int(info.get("dimension", 0)), embedder, dimension)


def lengths(ds: Any) -> set[int]:
    return {len(ds[name]) for name in TENSORS}


def extend(ds: Any, rows: Rows) -> None:
    """Each tensor extended whole: `Dataset.extend` goes sample by sample, three to five
    times slower. A write that fails between two tensors leaves them of unequal length in
    a version no one publishes."""
    with ds:
        ds.id.extend([str(i) for i in rows.ids])
        ds.text.extend(list(rows.texts))
        ds.embedding.extend(rows.vectors.astype(np.float32, copy=False))
        ds.metadata.extend(list(rows.metadata))


def _ids(part: Any) -> npt.NDArray[np.int64]:
    raw = np.asarray(part.id.numpy(aslist=True, fetch_chunks=True), dtype=object)
    ids: npt.NDArray[np.int64] = raw.reshape(-1).astype(np.int64)
    return ids


def check_whole(ds: Any, rows: int, last_id: int | None) -> None:
    """A store from before versions is taken over only when it is whole: every tensor
    `rows` long, every id and vector readable, the ids ascending up to the catalog's last."""
    try:
        if lengths(ds) != {rows}:
            raise StoreDamaged(f"tensors of length {lengths(ds)}, the catalog {rows}")
        if rows:
            ids = _ids(ds)
            ds.embedding.numpy(fetch_chunks=True)
            if np.any(np.diff(ids) <= 0) or int(ids[-1]) != last_id:
                raise StoreDamaged("its ids are not the catalog's")
    except (StoreDamaged, StoreError):
        raise
    except Exception as exc:
        raise StoreDamaged(f"the store cannot be read: {exc!r}") from exc


def read_rows(ds: Any, version: str, rows: int, cached: Snapshot | None) -> Snapshot:
    """`ds` (at `version`, `rows` long) as a snapshot; from `cached`'s last row on when
    `cached` is an earlier version of the same rows (a version only appends to the one it
    was made from, so its first rows are those of any version before it)."""
    try:
        if lengths(ds) != {rows}:
            raise StoreDamaged(f"version {version} has {lengths(ds)} rows, the catalog {rows}")
        start = 0
        if (
            cached is not None
            and 0 < cached.rows <= rows
            and int(_ids(ds[cached.rows - 1 : cached.rows])[0]) == int(cached.ids[-1])
        ):
            start = cached.rows
        part = ds[start:rows]
        ids = _ids(part)
        vectors = part.embedding.numpy(fetch_chunks=True).astype(np.float32, copy=False)
        texts = [str(t) for t in part.text.data()["value"]] if rows > start else []
    except StoreDamaged:
        raise
    except Exception as exc:
        raise StoreDamaged(f"version {version} cannot be read: {exc!r}") from exc
    if start and cached is not None:
        ids = np.concatenate([cached.ids, ids])
        vectors = np.concatenate([cached.vectors, vectors])
        texts = [*cached.texts, *texts]
    return Snapshot(version, ids, vectors, texts)


# rows of a version read at a time into search's arrays: the float32 page read is transient
VECTOR_PAGE = 8192

# chunk ids and their vectors, row for row
Held = tuple[npt.NDArray[np.int64], npt.NDArray[Any]]


def read_vectors(
    ds: Any,
    version: str,
    rows: int,
    base: Held | None,
    dtype: type[np.floating[Any]],
    dimension: int,
) -> tuple[Held, int]:
    """The ids and vectors (as `dtype`) of `ds` (at `version`, `rows` long), read a page at
    a time into arrays of their final size; from `base`'s last row on when `base` holds
    the first rows of this version (its last id is this version's at that row). With the
    number of rows taken from `base`."""
    try:
        if lengths(ds) != {rows}:
            raise StoreDamaged(f"version {version} has {lengths(ds)} rows, the catalog {rows}")
        start = 0
        if base is not None:
            held = len(base[0])
            if 0 < held <= rows and int(_ids(ds[held - 1 : held])[0]) == int(base[0][-1]):
                start = held
        if start == rows and base is not None and base[1].dtype == dtype:
            return base, start
        ids = np.empty(rows, dtype=np.int64)
        vectors = np.empty((rows, dimension), dtype=dtype)
        if start and base is not None:
            ids[:start] = base[0]
            vectors[:start] = base[1]
        for at in range(start, rows, VECTOR_PAGE):
            end = min(at + VECTOR_PAGE, rows)
            part = ds[at:end]
            ids[at:end] = _ids(part)
            vectors[at:end] = part.embedding.numpy(fetch_chunks=True)
    except StoreDamaged:
        raise
    except Exception as exc:
        raise StoreDamaged(f"version {version} cannot be read: {exc!r}") from exc
    return (ids, vectors), start


def disk_full(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@attrs.define
class DatasetWriter:
    """Appends rows to a dataset and counts them; each storage adds how a version is made
    whole (`finish`) and given up (`abandon`)."""

    ds: Any
    rows: int

    def append(self, rows: Rows) -> None:
        extend(self.ds, rows)
        self.rows += len(rows.ids)

    def flush(self) -> None:
        self.ds.flush()
        if lengths(self.ds) != {self.rows}:
            raise StoreDamaged(f"tensors of unequal length after a write: {lengths(self.ds)}")
