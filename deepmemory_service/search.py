"""Search a user's chunks, with or without their trained Deep Memory model.

With `deep_memory` a local store's queries go through the adapter the local trainer saved
beside it; a cloud (hub://) store asks deeplake's `VectorStore.search(deep_memory=True)`,
which runs Activeloop's model, in a daemon thread under a timeout (building a VectorStore
calls Activeloop's servers and retries for ever when they cannot be reached).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web
from attrs import frozen

from deepmemory_service import deeplake_compat
from deepmemory_service.embedders import Embedder, Matrix
from deepmemory_service.errors import BadGateway, Conflict, InvalidInput
from deepmemory_service.keys import SERVICES
from deepmemory_service.payloads import query_bool, query_int, query_uuid
from deepmemory_service.store import ChunkStore, StoreError
from deepmemory_service.trainer_local import load_adapter

routes = web.RouteTableDef()

CLOUD_SEARCH_TIMEOUT_S = 30.0
NO_MODEL = "No trained Deep Memory model for this user: train a run first"


class NoModelError(Conflict):
    """deep_memory was asked for, but this user has no trained model."""


@frozen
class SearchResult:
    chunk_id: int
    text: str
    score: float


async def _texts(store: ChunkStore, ids: npt.NDArray[np.int64]) -> list[str]:
    texts = await store.texts(len(ids))
    if len(texts) != len(ids):
        raise StoreError(
            f"vector store {store.path} holds {len(ids)} vectors but {len(texts)} texts"
        )
    return texts


def _nearest(vectors: Matrix, query: Matrix, k: int) -> list[tuple[int, float]]:
    """The `k` rows of `vectors` nearest the one `query` row by cosine similarity, best
    first, as (row, score)."""
    scores = (query @ vectors.T)[0]
    k = min(k, len(scores))
    if k == 0:
        return []
    top = np.argpartition(-scores, k - 1)[:k]
    return [(int(r), float(scores[r])) for r in top[np.argsort(-scores[top], kind="stable")]]


def _cloud_search(store: ChunkStore, vector: Matrix, k: int) -> dict[str, Any]:
    deeplake = deeplake_compat.load()
    vs = deeplake.VectorStore(
        path=store.path,
        runtime={"tensor_db": True},
        token=store.token,
        read_only=True,
        verbose=False,
    )
    found: dict[str, Any] = vs.search(
        embedding=vector[0], k=k, deep_memory=True, return_tensors=["id", "text"]
    )
    return found


async def _search_cloud_model(store: ChunkStore, vector: Matrix, k: int) -> list[SearchResult]:
    from deepmemory_service.trainer_activeloop import in_daemon_thread, install_request_guard

    install_request_guard()
    deadline = time.monotonic() + CLOUD_SEARCH_TIMEOUT_S
    try:
        async with asyncio.timeout(CLOUD_SEARCH_TIMEOUT_S):
            found = await in_daemon_thread(_cloud_search, store, vector, k, deadline=deadline)
    except TimeoutError:
        raise BadGateway(
            f"Activeloop Deep Memory search did not answer within {CLOUD_SEARCH_TIMEOUT_S:g}s"
        ) from None
    except Exception as exc:
        if type(exc).__name__ == "DeepMemoryAccessError":
            raise NoModelError(NO_MODEL) from None
        raise BadGateway(
            f"Activeloop Deep Memory search failed: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    return [
        SearchResult(int(i), str(t), float(s))
        for i, t, s in zip(found["id"], found["text"], found["score"], strict=True)
    ]


async def search_chunks(
    store: ChunkStore,
    embedder: Embedder,
    query: str,
    k: int,
    *,
    deep_memory: bool,
    rows: int | None = None,
) -> list[SearchResult]:
    """The top `k` chunks for `query` by cosine similarity, best first; `rows` is the
    catalog's chunk count, which validates the store's cached vectors."""
    if embedder.name != store.embedder or embedder.dimension != store.dimension:
        raise StoreError(
            f"vector store {store.path} holds {store.embedder} vectors of dimension "
            f"{store.dimension}, but the query embedder is {embedder.name} "
            f"({embedder.dimension})"
        )
    vectors = await embedder.embed([query])
    if deep_memory and store.is_cloud:
        return await _search_cloud_model(store, vectors, k)
    if deep_memory:
        adapter = load_adapter(store)
        if adapter is None:
            raise NoModelError(NO_MODEL)
        vectors = adapter.apply(vectors)
    # one read of the matrix: the ids and texts must be in the rows the scores were taken from
    ids, matrix = await store.matrix(rows)
    hits = _nearest(matrix, vectors, k)
    if not hits:
        return []
    texts = await _texts(store, ids)
    return [SearchResult(int(ids[row]), texts[row], score) for row, score in hits]


@routes.get("/search")
async def search(request: web.Request) -> web.Response:
    user_id: uuid.UUID = query_uuid(request, "user_id")
    query = request.query.get("q", "").strip()
    if not query:
        raise InvalidInput("q: field required")
    if len(query) > 2000:
        raise InvalidInput("q: at most 2000 characters")
    k = query_int(request, "k", 10, 1, 100)
    svc = request.app[SERVICES]
    deep_memory = query_bool(request, "deep_memory")
    async with svc.db.conn() as conn:
        rows = await conn.total_chunks(user_id)
        if deep_memory is None:
            row = await conn.get_settings(user_id)
            deep_memory = bool(row and row.enabled)
    found = await search_chunks(
        svc.stores.for_user(user_id), svc.embedder, query, k, deep_memory=deep_memory, rows=rows
    )
    results = [{"chunk_id": r.chunk_id, "text": r.text, "score": round(r.score, 6)} for r in found]
    return web.json_response({"results": results, "deep_memory": deep_memory})
