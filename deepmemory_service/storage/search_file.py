"""A large store's search data kept with it: the chunk ids and float16 vectors of its first
rows, in one file beside a local store (`<store>.search`) or one object in an s3:// store's
bucket (`<store>/search`), where every instance serving the store reads it.

Reading a large store's vectors from deeplake is slow (200,000 chunks: 17 s under load,
most of it the ids, kept as text), and search reads them again whenever the memory
budget evicted the user. The file holds them ready: a load reads it, then only the rows
the store gained since from deeplake.

The file is derived data and never trusted: written whole or not at all (beside, synced,
renamed; one PUT), and used for a version only when it was made with the same embedder and
dimension, holds no more rows than the version, and its last id is the version's id at
that row (versions only append, and the catalog never reuses an id). A file of a version
that was never published (a writer that crashed, another instance's) fails that check, is
ignored, and is written again from the store.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from deepmemory_service.storage.dataset import Held
from deepmemory_service.storage.side_files import LocalSideFile, SideFile

NAME = "search"
MAGIC = b"deepmemory-search 1\n"


def encode(embedder: str, dimension: int, ids: np.ndarray, vectors: np.ndarray) -> list[Any]:
    """The file's parts: the magic line, a JSON header line, the ids, the vectors."""
    header = {
        "embedder": embedder,
        "dimension": dimension,
        "rows": len(ids),
        "dtype": "float16",
    }
    return [
        MAGIC,
        json.dumps(header).encode() + b"\n",
        np.ascontiguousarray(ids, dtype="<i8").data.cast("B"),
        np.ascontiguousarray(vectors, dtype="<f2").data.cast("B"),
    ]


def _header(line: bytes, embedder: str, dimension: int) -> int | None:
    """The rows a file's header line announces; None when not of this embedder."""
    try:
        header = json.loads(line)
        rows = int(header["rows"])
        if (header["embedder"], int(header["dimension"]), header["dtype"]) != (
            embedder,
            dimension,
            "float16",
        ):
            return None
    except (ValueError, KeyError, TypeError):
        return None
    return rows if rows > 0 else None


def _size(rows: int, dimension: int) -> int:
    return rows * 8 + rows * dimension * 2


def decode(data: bytes, embedder: str, dimension: int) -> Held | None:
    """The ids and vectors in `data` (copied: arrays of their own, writable, as usearch's
    scan wants them); None when it is not such a file, or of another embedder or
    dimension, or cut short."""
    if not data.startswith(MAGIC):
        return None
    end = data.find(b"\n", len(MAGIC))
    rows = _header(data[len(MAGIC) : end], embedder, dimension) if end > 0 else None
    start = end + 1
    if rows is None or len(data) - start != _size(rows, dimension):
        return None
    ids = np.frombuffer(data, dtype="<i8", count=rows, offset=start).astype(np.int64)
    vectors = np.frombuffer(data, dtype="<f2", count=rows * dimension, offset=start + rows * 8)
    return ids, vectors.astype(np.float16).reshape(rows, dimension)


def _read_local(file: LocalSideFile, embedder: str, dimension: int) -> Held | None:
    """`decode` of a local file, read straight into the arrays (never whole in memory
    twice)."""
    try:
        with file.path.open("rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            rows = _header(f.readline(), embedder, dimension)
            if rows is None or os.fstat(f.fileno()).st_size - f.tell() != _size(rows, dimension):
                return None
            ids = np.fromfile(f, dtype="<i8", count=rows).astype(np.int64, copy=False)
            vectors = np.fromfile(f, dtype="<f2", count=rows * dimension)
    except FileNotFoundError:
        return None
    return ids, vectors.astype(np.float16, copy=False).reshape(rows, dimension)


def read(file: SideFile, embedder: str, dimension: int) -> Held | None:
    """The file's ids and vectors, or None when there is none fit to use (blocking)."""
    if isinstance(file, LocalSideFile):
        return _read_local(file, embedder, dimension)
    found = file.read()
    return None if found is None else decode(found[1], embedder, dimension)


def write(file: SideFile, embedder: str, dimension: int, held: Held) -> None:
    """The file, whole or not at all (blocking)."""
    parts = encode(embedder, dimension, *held)
    if isinstance(file, LocalSideFile):
        file.write_parts(parts)
    else:
        file.write(b"".join(parts))


def worth_writing(rows: int, filed: int) -> bool:
    """Whether the file should be written again for a version of `rows` chunks, of which
    it holds `filed`: when a tenth of the version came since (a store growing by uploads
    is written again every tenth, not on each)."""
    return rows - filed >= max(1, rows // 10)
