"""Ingestion: documents → chunks → embeddings, then into the catalog and the user's vector
store together (corpus.py).

The slow part (chunking, embedding) runs before the user's lock or a database connection
is taken; the lock is held only for the writes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import structlog

from deepmemory_service import chunking, corpus
from deepmemory_service.corpus import Added, NewDocument
from deepmemory_service.errors import InvalidInput
from deepmemory_service.payloads import DocumentIn
from deepmemory_service.services import Services

log = structlog.get_logger(__name__)

# documents chunked on the event loop; a larger upload is chunked in the executor
CHUNK_INLINE = 64


def _split(documents: Sequence[DocumentIn], size: int, overlap: int) -> list[NewDocument]:
    split = []
    for i, doc in enumerate(documents):
        texts = chunking.split(doc.text, size, overlap)
        if not texts:
            raise InvalidInput(f"documents[{i}].text: must contain some text")
        split.append(NewDocument(doc.title, texts))
    return split


async def ingest(svc: Services, user_id: uuid.UUID, documents: Sequence[DocumentIn]) -> Added:
    if not documents:
        raise InvalidInput("documents: at least one document is required")
    cfg = svc.settings.store
    if len(documents) <= CHUNK_INLINE:
        split = _split(documents, cfg.chunk_chars, cfg.chunk_overlap)
    else:
        split = await asyncio.get_running_loop().run_in_executor(
            None, _split, documents, cfg.chunk_chars, cfg.chunk_overlap
        )
    vectors = await svc.embedder.embed([t for d in split for t in d.chunks])
    added = await corpus.add(svc, user_id, split, vectors)
    log.info(
        "documents ingested",
        documents=len(added.document_ids),
        chunks=added.chunks,
        total_chunks=added.total_chunks,
    )
    return added
