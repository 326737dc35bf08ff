"""An upload's vectors, embedded a part at a time in the background while the parts before
them are written: the two halves of an upload's pipeline (`cpu_pool`'s two lanes).

The hashing embedder's parts are embedded side by side in its worker processes; any other
embedder's one after another, as one call for the whole upload would have been (an
embeddings API sees no more requests at once than before). The writer takes each part as
it is ready. An upload that fails or is cancelled stops the embedding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import attrs
import numpy as np

from deepmemory_service.storage.embedders import Embedder
from deepmemory_service.vectors import Matrix

# chunks a part: small enough that writing begins soon, large enough that a part's
# fixed costs (a worker call each way, deeplake's per-append work) stay small
PART = 256


@attrs.define
class VectorParts:
    """`sizes[i]` rows in part i, ready when `parts[i]` is; `stop()` ends it early."""

    sizes: list[int]
    dimension: int
    _parts: list[asyncio.Future[Matrix]]
    _producer: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, embedder: Embedder, texts: Sequence[str], part: int = PART) -> VectorParts:
        """Begins embedding `texts`, `part` at a time, in a task of its own."""
        loop = asyncio.get_running_loop()
        bounds = [(i, min(i + part, len(texts))) for i in range(0, len(texts), part)]
        parts: list[asyncio.Future[Matrix]] = [loop.create_future() for _ in bounds]
        made = cls([b - a for a, b in bounds], embedder.dimension, parts)

        # an embedder in worker processes of ours may take several parts at once; an API's
        # or a model's, one at a time
        at_once = asyncio.Semaphore(getattr(embedder, "parallel", 1))

        async def one(a: int, b: int, future: asyncio.Future[Matrix]) -> None:
            async with at_once:
                if future.done():
                    return
                try:
                    matrix = await embedder.embed(texts[a:b])
                except Exception as exc:
                    made.stop(exc)  # this part and those not yet embedded: the failure
                    return
            if not future.done():
                future.set_result(matrix)

        async def produce() -> None:
            # in order: the semaphore admits the parts as they were asked for
            await asyncio.gather(
                *(one(a, b, future) for (a, b), future in zip(bounds, parts, strict=True))
            )

        if bounds:
            made._producer = asyncio.create_task(produce())
        return made

    def __len__(self) -> int:
        return len(self._parts)

    async def part(self, i: int) -> Matrix:
        return await self._parts[i]

    async def whole(self) -> Matrix:
        """Every part, one matrix."""
        matrices = [await part for part in self._parts]
        if not matrices:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate(matrices)

    def stop(self, failure: Exception | None = None) -> None:
        """The embedding not yet done abandoned: the parts not ready fail with `failure`,
        or are cancelled (no one waits for them)."""
        for future in self._parts:
            if not future.done():
                if failure is None:
                    future.cancel()
                else:
                    future.set_exception(failure)
            if future.done() and not future.cancelled():
                future.exception()  # seen: a failure no one awaits is not logged as lost
        if self._producer is not None and not self._producer.done():
            self._producer.cancel()

    async def close(self) -> None:
        """`stop()`, and the producer awaited, so that nothing runs on after the upload."""
        self.stop()
        if self._producer is not None:
            await asyncio.wait([self._producer])
