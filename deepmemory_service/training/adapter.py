"""The local trainer's model: a residual transform of query embeddings, its file beside the
user's vector store, and a bounded cache of loaded ones.

The transform is `q' = normalise(q + q*w + q A B)`: a per-dimension re-weighting `w` (for a
hashing embedder, learned term weights) plus a map `A B`, of low rank or full (`A` the
identity). With `w` and `B` at zero it is exactly the identity.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.vectors import Matrix, normalise

Floats = npt.NDArray[np.float32]


@attrs.frozen
class Weights:
    """The learned part of the transform."""

    w: Floats
    a: Floats
    b: Floats

    def apply(self, queries: Matrix) -> Matrix:
        return normalise(
            (queries + queries * self.w + (queries @ self.a) @ self.b).astype(np.float32)
        )

    def shrunk(self, alpha: float) -> Weights:
        """Pulled toward the identity: `q + alpha * (q*w + q A B)`."""
        return Weights(self.w * alpha, self.a.copy(), self.b * alpha)


@attrs.frozen
class Adapter:
    """Weights and what they were made for: the embedder and the training run."""

    weights: Weights
    embedder: str
    run_id: str

    @property
    def dimension(self) -> int:
        return int(self.weights.w.shape[0])

    def apply(self, queries: Matrix) -> Matrix:
        return self.weights.apply(queries)


def model_path(store: ChunkStore) -> Path:
    """The adapter lives beside the user's dataset folder."""
    return Path(f"{store.path}.deepmemory.npz")


def save_adapter(path: Path, adapter: Adapter, metrics: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        w=adapter.weights.w,
        a=adapter.weights.a,
        b=adapter.weights.b,
        embedder=adapter.embedder,
        dimension=adapter.dimension,
        run_id=adapter.run_id,
        metrics=json.dumps(metrics),
    )
    os.replace(tmp, path)  # readers see the old model or the new one, never half of one


def read_adapter(path: Path) -> Adapter:
    with np.load(path) as data:
        return Adapter(
            Weights(data["w"], data["a"], data["b"]), str(data["embedder"]), str(data["run_id"])
        )


@attrs.define
class AdapterCache:
    """The most recently used adapters, each valid until its file changes; at most `size`
    of them, so a process serving many users holds a bounded number of models."""

    size: int = 16
    _entries: OrderedDict[Path, tuple[float, Adapter]] = attrs.field(
        factory=OrderedDict, init=False
    )

    def __len__(self) -> int:
        return len(self._entries)

    async def load(self, store: ChunkStore) -> Adapter | None:
        """The user's adapter for the store's embedder, or None; the file is read off the
        event loop, and only when it changed since it was cached."""
        path = model_path(store)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            self._entries.pop(path, None)
            return None
        cached = self._entries.get(path)
        if cached is not None and cached[0] == mtime:
            self._entries.move_to_end(path)
            adapter = cached[1]
        else:
            adapter = await asyncio.get_running_loop().run_in_executor(None, read_adapter, path)
            self._entries[path] = (mtime, adapter)
            self._entries.move_to_end(path)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        if adapter.embedder != store.embedder or adapter.dimension != store.dimension:
            return None
        return adapter
