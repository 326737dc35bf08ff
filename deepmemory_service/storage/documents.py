"""Ingestion: documents → chunks → embeddings, then into the catalog and the user's vector
store together (corpus.py).

The slow part (chunking, embedding) starts before the user's lock or a database connection
is taken; the store's writes take the vectors part by part as they are embedded. One
user's uploads are bounded (`upload_gate.py`): a few in progress at once, writing one at a
time.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence

import structlog
from attrs import frozen

from deepmemory_service.errors import InvalidInput
from deepmemory_service.storage import corpus
from deepmemory_service.storage.corpus import Added, Corpora, NewDocument
from deepmemory_service.storage.vector_parts import VectorParts
from deepmemory_service.text import chunking

log = structlog.get_logger(__name__)

# documents chunked on the event loop; a larger upload is chunked in the executor
CHUNK_INLINE = 64


@frozen
class DocumentText:
    """A document as a user gives it: its text, and a title if it has one."""

    text: str
    title: str | None = None


def digest(title: str | None, text: str) -> bytes:
    """What makes two documents the same: their title and their text."""
    return hashlib.sha256((title or "").encode() + b"\0" + text.encode()).digest()


def _split(documents: Sequence[DocumentText], size: int, overlap: int) -> list[NewDocument]:
    split = []
    for i, doc in enumerate(documents):
        texts = chunking.split(doc.text, size, overlap)
        if not texts:
            raise InvalidInput(f"documents[{i}].text: must contain some text")
        split.append(NewDocument(doc.title, texts, digest(doc.title, doc.text)))
    return split


def _unknown(split: Sequence[NewDocument], known: set[bytes]) -> tuple[list[int], list[int]]:
    """The indexes of the documents to add and of those to skip: the ones whose digest is
    `known`, and the repeats of one earlier in the same upload."""
    seen = set(known)
    kept: list[int] = []
    skipped: list[int] = []
    for i, doc in enumerate(split):
        (skipped if doc.digest in seen else kept).append(i)
        seen.add(doc.digest)
    return kept, skipped


async def ingest(
    corpora: Corpora,
    user_id: uuid.UUID,
    documents: Sequence[DocumentText],
    *,
    skip_unchanged: bool = False,
) -> Added:
    """Adds `documents` to the user's catalog and vector store; with `skip_unchanged`, not
    those the user already has with the same title and text (`Added.skipped` lists them)."""
    if not documents:
        raise InvalidInput("documents: at least one document is required")
    most = corpora.limits.max_documents
    if len(documents) > most:
        raise InvalidInput(f"documents: at most {most} per request, got {len(documents)}")
    async with corpora.uploads.admit(user_id):
        added, skipped = await _ingest(corpora, user_id, documents, skip_unchanged)
    log.info(
        "documents ingested",
        documents=len(added.document_ids),
        chunks=added.chunks,
        total_chunks=added.total_chunks,
        skipped=len(skipped),
    )
    return Added(added.document_ids, added.chunks, added.total_chunks, skipped)


async def _ingest(
    corpora: Corpora, user_id: uuid.UUID, documents: Sequence[DocumentText], skip_unchanged: bool
) -> tuple[Added, list[int]]:
    cfg = corpora.chunking
    if len(documents) <= CHUNK_INLINE:
        split = _split(documents, cfg.chunk_chars, cfg.chunk_overlap)
    else:
        split = await asyncio.get_running_loop().run_in_executor(
            None, _split, documents, cfg.chunk_chars, cfg.chunk_overlap
        )
    kept: list[int] = list(range(len(split)))
    skipped: list[int] = []
    if skip_unchanged:
        # a read before embedding, so unchanged documents cost no embedding; corpus.add
        # looks again under the user's lock, for an upload of the same ones meanwhile
        known = await corpora.db.read(lambda c: c.known_digests(user_id, [d.digest for d in split]))
        kept, skipped = _unknown(split, known)
        if not kept:
            total = await corpora.db.read(lambda c: c.total_chunks(user_id))
            return Added([], 0, total, []), skipped
    new = [split[i] for i in kept]
    # embedded in the background from now on (while this upload waits for its turn and
    # adds its chunks to the catalog), part by part: the store writes each part as it comes
    vectors = VectorParts.start(corpora.embedder, [t for d in new for t in d.chunks])
    try:
        async with corpora.uploads.turn(user_id):
            added = await corpus.add(corpora, user_id, new, vectors, skip_known=skip_unchanged)
    finally:
        await vectors.close()
    return added, sorted(skipped + [kept[i] for i in added.skipped])
