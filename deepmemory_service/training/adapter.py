"""The local trainer's model: a residual transform of query embeddings, its file kept with
the user's vector store (beside a local store, in an s3:// store's bucket: where every
instance serving the store reads it; `side_files.py`), and a bounded cache of loaded ones.

The transform is `q' = normalise(q + q*w + q A B)`: a per-dimension re-weighting `w` (for a
hashing embedder, learned term weights) plus a map `A B`, of low rank or full (`A` the
identity). With `w` and `B` at zero it is exactly the identity. A run's model is the
average of several such transforms, trained on other validation splits (`Weights.mean`).
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from deepmemory_service.storage.object_store import StoreUnreachable
from deepmemory_service.storage.side_files import LocalSideFile, SideFile, side_file
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

    @classmethod
    def mean(cls, members: Sequence[Weights | None]) -> Weights | None:
        """The average of the members' transforms before normalising; None when no member
        has weights. A member without (no model beat none on its validation questions)
        abstains: counted as the identity, it would shrink the others' correction, and one
        that must outweigh a distractor's words then no longer does (on the noisy corpus of
        tests/service/test_training.py, one member of three found no model: with it as the
        identity the average won none of the 21 test questions one model alone won, without
        it all 21). `A B` of the average is the members' maps side by side (`A` stacked,
        `B` divided by their number), or one full map when a member's is full (no larger,
        and cheaper to apply)."""
        found = [m for m in members if m is not None]
        if not found:
            return None
        n = len(found)
        dim = found[0].w.shape[0]
        w = (np.sum([m.w for m in found], axis=0) / n).astype(np.float32)
        if any(m.a.shape[1] >= dim for m in found):
            a = np.eye(dim, dtype=np.float32)
            b = (np.sum([m.a @ m.b for m in found], axis=0) / n).astype(np.float32)
        else:
            a = np.concatenate([m.a for m in found], axis=1).astype(np.float32)
            b = (np.concatenate([m.b for m in found], axis=0) / n).astype(np.float32)
        return cls(w, a, b)


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


MODEL_FILE = "deepmemory.npz"


def model_file(store: ChunkStore) -> SideFile:
    """Where the user's adapter is kept, for every instance serving the store."""
    return side_file(store, MODEL_FILE)


def model_path(store: ChunkStore) -> Path:
    """A local store's adapter file, beside its dataset folder."""
    return Path(f"{store.path}.{MODEL_FILE}")


def adapter_bytes(adapter: Adapter, metrics: dict[str, Any]) -> bytes:
    """The adapter as the file that keeps it (numpy's .npz)."""
    out = io.BytesIO()
    np.savez(
        out,
        w=adapter.weights.w,
        a=adapter.weights.a,
        b=adapter.weights.b,
        embedder=adapter.embedder,
        dimension=adapter.dimension,
        run_id=adapter.run_id,
        metrics=json.dumps(metrics),
    )
    return out.getvalue()


def adapter_of(data: bytes) -> Adapter:
    with np.load(io.BytesIO(data)) as saved:
        return Adapter(
            Weights(saved["w"], saved["a"], saved["b"]),
            str(saved["embedder"]),
            str(saved["run_id"]),
        )


def save_adapter(path: Path, adapter: Adapter, metrics: dict[str, Any]) -> None:
    """Into a local file (readers see the old model or the new one, never half of one)."""
    LocalSideFile(path).write(adapter_bytes(adapter, metrics))


def read_adapter(path: Path) -> Adapter:
    return adapter_of(path.read_bytes())


@attrs.define
class AdapterCache:
    """The most recently used adapters, each valid until its file changes; at most `size`
    of them, so a process serving many users holds a bounded number of models."""

    size: int = 16
    _entries: OrderedDict[str, tuple[str, Adapter]] = attrs.field(factory=OrderedDict, init=False)

    def __len__(self) -> int:
        return len(self._entries)

    async def load(self, store: ChunkStore) -> Adapter | None:
        """The user's adapter for the store's embedder, or None; the file is read off the
        event loop, and only when it changed since it was cached (one stat, or one HEAD
        request of a bucket's object: a model trained on another instance is seen at once;
        while the bucket does not answer, the one cached is used)."""
        file = model_file(store)
        key = file.name
        cached = self._entries.get(key)
        try:
            stamp = await store.blocking(file.stamp)
        except StoreUnreachable:
            if cached is None:
                raise
            # meanwhile the model cached serves (a newer one, trained elsewhere in the
            # meantime, is read once the bucket answers again)
            stamp = cached[0]
        if stamp is None:
            self._entries.pop(key, None)
            return None
        if cached is not None and cached[0] == stamp:
            self._entries.move_to_end(key)
            adapter = cached[1]
        else:
            found = await store.blocking(file.read)
            if found is None:
                self._entries.pop(key, None)
                return None
            adapter = adapter_of(found[1])
            self._entries[key] = (found[0], adapter)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        if adapter.embedder != store.embedder or adapter.dimension != store.dimension:
            return None
        return adapter
