"""Search a user's chunks, with or without their trained Deep Memory model.

One rule for which model is used, the same in the settings, on the page and here: the model
of the user's last training, and only when its verdict let it be enabled. After a training
whose model was kept out, no model is used, not even one an earlier training left with the
trainer (a 409 saying so, and why).

With `deep_memory`, the configured trainer hands over the user's model (`query_model`):
the local trainer's adapter in front of the store's own search, or Activeloop's model,
which searches in their cloud. Without it, the store's nearest chunks by cosine
similarity.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from aiohttp import web

from deepmemory_service.api.keys import SERVICES
from deepmemory_service.api.payloads import query_bool, query_int, query_uuid
from deepmemory_service.api.replies import SearchReply, to_json
from deepmemory_service.errors import Conflict, InvalidInput
from deepmemory_service.models import Corpus
from deepmemory_service.storage import corpus
from deepmemory_service.storage.embedders import Embedder
from deepmemory_service.storage.nearest import Nearest, SearchResult, search_in, store_nearest
from deepmemory_service.storage.search_cache import SearchVectors
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.training.trainer import NoModel, Trainer
from deepmemory_service.vectors import Matrix

NO_MODEL = "No trained Deep Memory model for this user: train a run first"
KEPT_OUT = "The last trained Deep Memory model was not enabled"


class NoModelError(Conflict):
    """deep_memory was asked for, but this user has no trained model."""


async def search_chunks(
    store: ChunkStore,
    embedder: Embedder,
    query: str,
    k: int,
    *,
    trainer: Trainer | None = None,
    nearest: Nearest | None = None,
) -> list[SearchResult]:
    """The top `k` chunks for `query`, best first: through `trainer`'s model for the
    store when one is given (a model transforms the query, and searches with `nearest`),
    else by plain cosine similarity. `nearest` searches the store at the catalog's
    version; by default the newest version the store knows (a store without a catalog)."""
    nearest = nearest or store_nearest(store)
    vectors = await embedder.embed([query])
    if trainer is None:
        return await nearest(vectors, k)
    model = await trainer.query_model(store)
    if model is None:
        raise NoModelError(NO_MODEL)
    try:
        return await model.search(vectors, k, nearest)
    except NoModel:
        raise NoModelError(NO_MODEL) from None


def _kept_out(reason: str | None) -> str:
    """The 409 of a search through a model the trainer kept out: so, and the verdict."""
    return f"{KEPT_OUT}. {reason}" if reason else f"{KEPT_OUT}."


async def search(request: web.Request) -> web.Response:
    user_id: uuid.UUID = query_uuid(request, "user_id")
    raw = request.query.get("q", "")
    if len(raw) > 2000:
        raise InvalidInput("q: at most 2000 characters")
    query = raw.strip()
    if not query:
        raise InvalidInput("q: field required")
    k = query_int(request, "k", 10, 1, 100)
    svc = request.app[SERVICES]
    deep_memory = query_bool(request, "deep_memory")
    async with svc.request_db.conn() as conn:
        in_catalog = await conn.corpus(user_id)
        row = await conn.get_settings(user_id)
    if deep_memory is None:
        deep_memory = bool(row and row.enabled)
    svc.request_corpora.check_embedder(in_catalog)
    if deep_memory and row is not None and row.last_training_run_id and not row.can_enable:
        # the last training's model was kept out: no model is used, not even an earlier one
        # the trainer may still hold (the settings, the page and search say the same)
        raise NoModelError(_kept_out(row.can_enable_reason))
    store = svc.stores.for_user(user_id)

    async def held(at: Corpus) -> SearchVectors:
        return await svc.stores.search.vectors(store, at.version, at.rows)

    async def read() -> SearchVectors:
        # the user's ids and vectors within the memory budget, at the catalog's version
        return await corpus.at_catalog(svc.request_corpora, user_id, in_catalog, held)

    async def texts(ids: Sequence[int]) -> dict[int, str]:
        return await svc.request_db.read(lambda c: c.chunk_texts(user_id, ids))

    async def nearest(vectors: Matrix, top: int) -> list[SearchResult]:
        return await search_in(read, texts, vectors, top)

    try:
        found = await search_chunks(
            store,
            svc.embedder,
            query,
            k,
            trainer=svc.trainer if deep_memory else None,
            nearest=nearest,
        )
    except NoModelError:
        async with svc.request_db.conn() as conn:
            row = await conn.get_settings(user_id)
        if row is not None and row.last_training_run_id and not row.can_enable:
            # kept out by a training that ended meanwhile
            raise NoModelError(_kept_out(row.can_enable_reason)) from None
        raise
    results = [SearchResult(r.chunk_id, r.text, round(r.score, 6)) for r in found]
    return web.json_response(to_json(SearchReply(results, deep_memory)))
