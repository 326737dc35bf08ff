"""Ingestion: documents → chunks → embeddings → the user's vector store and the catalog."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import attrs
import structlog

from deepmemory_service import chunking
from deepmemory_service.errors import InvalidInput
from deepmemory_service.payloads import DocumentIn
from deepmemory_service.services import Services

log = structlog.get_logger(__name__)


@attrs.frozen
class Ingested:
    document_ids: list[uuid.UUID]
    chunks: int
    total_chunks: int


async def ingest(svc: Services, user_id: uuid.UUID, documents: Sequence[DocumentIn]) -> Ingested:
    if not documents:
        raise InvalidInput("documents: at least one document is required")
    store_cfg = svc.settings.store
    split = []
    for i, doc in enumerate(documents):
        texts = chunking.split(doc.text, store_cfg.chunk_chars, store_cfg.chunk_overlap)
        if not texts:
            raise InvalidInput(f"documents[{i}].text: must contain some text")
        split.append((doc, texts))

    embedder = svc.embedder
    store = svc.stores.for_user(user_id)
    # under the user's lock: a run's chunk snapshot never sees a half-ingested document
    async with svc.db.tx(lock_user=user_id) as conn:
        ids: list[int] = []
        texts_all: list[str] = []
        metadata: list[dict[str, object]] = []
        document_ids = []
        for doc, texts in split:
            document_id, chunk_ids = await conn.add_document(user_id, doc.title, texts)
            document_ids.append(document_id)
            ids += chunk_ids
            texts_all += texts
            metadata += [
                {"document_id": str(document_id), "title": doc.title, "position": p}
                for p in range(len(texts))
            ]
        total = await conn.add_to_corpus(user_id, len(ids), embedder.name, embedder.dimension)
        vectors = await embedder.embed(texts_all)
        await store.add(ids, texts_all, vectors, metadata)
    log.info("documents ingested", documents=len(document_ids), chunks=len(ids), total_chunks=total)
    return Ingested(document_ids, len(ids), total)
