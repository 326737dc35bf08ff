"""A user's corpus: chunks in the catalog (PostgreSQL, the truth) and their vectors in the
user's vector store, kept in line.

Adding chunks is all-or-nothing across the two. Under the user's lock, the chunks' ids are
taken from the catalog's sequence; the next store version is written beside the published
one (store.py) while the catalog adds the chunks, and the catalog publishes that version in
the same transaction, once both are done. A crash or a full disk before the commit
leaves an unpublished version, cleared away by the next write; after it, the version is
whole (it was flushed and synced first). Readers read the version the catalog names.

A store that cannot serve the catalog's version (one written before versions, or damaged
by hand) is brought back in line on its next use: taken over when it is whole, otherwise
rebuilt from the catalog's chunk texts with the configured embedder.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from types import MappingProxyType
from typing import TypeVar

import attrs
import numpy as np
import structlog
from attrs import frozen

from deepmemory_service.db.database import Conn, Database
from deepmemory_service.models import Corpus
from deepmemory_service.platform.config import StoreSettings, UploadSettings
from deepmemory_service.storage.dataset import (
    Rows,
    Snapshot,
    StoreDamaged,
    StoreError,
    check_embedder,
)
from deepmemory_service.storage.embedders import Embedder
from deepmemory_service.storage.store import ChunkStore, StoreRegistry, StoreWriter
from deepmemory_service.storage.upload_gate import UploadGate
from deepmemory_service.storage.vector_parts import VectorParts
from deepmemory_service.vectors import Matrix

log = structlog.get_logger(__name__)

T = TypeVar("T")
# what a user without a catalog entry has: no chunks, no version
_EMPTY = Corpus(0, None, "", 0, None)

# catalog chunks embedded and appended at a time by a rebuild
REBUILD_PAGE = 512
STORE_UNAVAILABLE = "This user's vector store is being repaired; retry shortly"


class StoreUnavailable(StoreError):
    """The store could not be read or repaired just now."""

    status = 503
    headers = MappingProxyType({"Retry-After": "1"})


@frozen
class Corpora:
    """Where every user's corpus is kept and how documents enter it: the catalog's
    database, the vector stores, the embedder, the upload gate, and their settings."""

    db: Database
    stores: StoreRegistry
    embedder: Embedder
    uploads: UploadGate
    chunking: StoreSettings
    limits: UploadSettings

    def check_embedder(self, corpus: Corpus | None) -> None:
        """A catalog made with another embedder than the configured one is `EmbedderMismatch`."""
        if corpus is not None:
            check_embedder(
                corpus.embedder, corpus.dimension, self.embedder.name, self.embedder.dimension
            )


@frozen
class NewDocument:
    title: str | None
    chunks: Sequence[str]
    # of title and text: the same document added again has the same one
    digest: bytes


@frozen
class Added:
    document_ids: list[uuid.UUID]
    chunks: int
    total_chunks: int
    # indexes of the documents not added: the user already had them (skip_known)
    skipped: list[int] = attrs.field(factory=list)


def _metadata(document_id: uuid.UUID, title: str | None, position: int) -> dict[str, object]:
    """What the store keeps beside each chunk."""
    return {"document_id": str(document_id), "title": title, "position": position}


async def add(
    corpora: Corpora,
    user_id: uuid.UUID,
    documents: Sequence[NewDocument],
    vectors: VectorParts,
    *,
    skip_known: bool = False,
) -> Added:
    """Adds documents already chunked, their vectors being embedded (`vectors`: one row
    per chunk, in order), to the catalog and the store, both or neither; with
    `skip_known`, not those whose digest the user already has. A local store's version is
    written part by part as the vectors come."""
    store = corpora.stores.for_user(user_id)
    async with corpora.db.tx(lock_user=user_id) as conn:
        corpus = await conn.corpus(user_id)
        corpora.check_embedder(corpus)
        skipped: list[int] = []
        whole: Matrix | None = None
        if skip_known:
            known = await conn.known_digests(user_id, [d.digest for d in documents])
            if known:  # added meanwhile by another upload: the rest written at once
                documents, whole, skipped = _without_known(documents, await vectors.whole(), known)
            if not documents:
                return Added([], 0, corpus.rows if corpus else 0, skipped)
        document_ids = [uuid.uuid4() for _ in documents]
        ids = await conn.chunk_ids(sum(len(d.chunks) for d in documents))
        rows = _Rows(
            ids,
            [t for d in documents for t in d.chunks],
            [
                _metadata(document_id, d.title, p)
                for document_id, d in zip(document_ids, documents, strict=True)
                for p in range(len(d.chunks))
            ],
        )
        insert = conn.add_documents(
            user_id, [(d.title, d.chunks, d.digest) for d in documents], document_ids, ids
        )
        base, base_rows = (corpus.version, corpus.rows) if corpus else (None, 0)
        last_id = corpus.last_id if corpus else None
        try:
            if whole is not None or store.kind != "local":
                # a store in a bucket or the cloud: one append, one flush
                await insert
                matrix = whole if whole is not None else await vectors.whole()
                version = await store.write(base, base_rows, last_id, rows.all(matrix))
            else:
                version = await _beside(
                    insert, _write_parts(store, base, base_rows, last_id, rows, vectors), vectors
                )
            total = base_rows + len(ids)
        except StoreDamaged as exc:
            # the catalog, this upload's chunks included (same transaction), rebuilt
            log.warning("vector store out of line with the catalog", reason=str(exc))
            vectors.stop()
            writer = await _rebuild(corpora, conn, user_id, store, base_rows + len(ids))
            version, total = await _finished(writer), writer.rows
        await _publish(corpora, conn, user_id, total, version)
    # after the commit; a crash before it leaves only the link and the clean-up to redo
    await store.published(version)
    return Added(document_ids, len(ids), total, skipped)


@frozen
class _Rows:
    """An upload's rows but their vectors."""

    ids: Sequence[int]
    texts: Sequence[str]
    metadata: Sequence[dict[str, object]]

    def all(self, vectors: Matrix) -> Rows:
        return Rows(self.ids, self.texts, vectors, self.metadata)

    def part(self, start: int, vectors: Matrix) -> Rows:
        end = start + len(vectors)
        return Rows(self.ids[start:end], self.texts[start:end], vectors, self.metadata[start:end])


async def _beside(insert: Awaitable[None], write: Awaitable[str], vectors: VectorParts) -> str:
    """The catalog's insert and the store's write (`_write_parts`) at once: the store's
    version, once both are done. The write needs only the chunks' ids, taken before; the
    insert (a megabyte of text for an upload of a thousand chunks: 25-70 ms of an upload's
    200-350 on the project's 2-core machine) was waited for. When the insert fails, the
    write is stopped and abandoned (or, all its parts written already, it leaves an
    unpublished version, cleared away by the next write) before the failure is raised;
    when the write fails, its failure is raised once the insert is done, so that a
    rebuild (`StoreDamaged`) finds this upload's chunks in the catalog."""
    writing = asyncio.ensure_future(write)
    try:
        await insert
    except BaseException:
        vectors.stop()  # the parts not yet written: `_write_parts` abandons the version
        await asyncio.wait([writing])
        if not writing.cancelled():
            writing.exception()  # seen: the insert's failure is the one raised
        raise
    return await writing


async def _write_parts(
    store: ChunkStore,
    base: str | None,
    base_rows: int,
    last_id: int | None,
    rows: _Rows,
    vectors: VectorParts,
) -> str:
    """The next version, each part of the vectors appended as soon as it is embedded (the
    next part is embedded meanwhile); made whole, its name. Abandoned on any failure."""
    writer = await store.begin(base, base_rows, last_id)
    try:
        start = 0
        for i in range(len(vectors)):
            matrix = await vectors.part(i)
            await writer.append(rows.part(start, matrix))
            start += len(matrix)
        if start != len(rows.ids):
            raise StoreError(f"{start} vectors for {len(rows.ids)} chunks")
        return await writer.finish()
    except BaseException:
        await writer.abandon()
        raise


def _without_known(
    documents: Sequence[NewDocument], vectors: Matrix, known: set[bytes]
) -> tuple[Sequence[NewDocument], Matrix, list[int]]:
    """The documents whose digest is not `known`, their rows of `vectors`, and the indexes
    of those left out."""
    if not known:
        return documents, vectors, []
    kept: list[NewDocument] = []
    rows: list[int] = []
    skipped: list[int] = []
    row = 0
    for i, doc in enumerate(documents):
        if doc.digest in known:
            skipped.append(i)
        else:
            kept.append(doc)
            rows += range(row, row + len(doc.chunks))
        row += len(doc.chunks)
    return kept, vectors[rows], skipped


async def snapshot(corpora: Corpora, user_id: uuid.UUID, corpus: Corpus | None) -> Snapshot:
    """The store at the catalog's version (`corpus`, just read from the catalog), read
    whole (`at_catalog`)."""
    store = corpora.stores.for_user(user_id)
    return await at_catalog(corpora, user_id, corpus, lambda c: store.read(c.version, c.rows))


async def at_catalog(
    corpora: Corpora,
    user_id: uuid.UUID,
    corpus: Corpus | None,
    read: Callable[[Corpus], Awaitable[T]],
) -> T:
    """`read` of the store at the catalog's version (`corpus`, just read from the catalog;
    None: an empty store). A version cleared away meanwhile (two uploads published during
    the read) is read again at the catalog's newer one; a store that cannot serve the
    catalog is repaired first."""
    corpora.check_embedder(corpus)
    for _ in range(3):
        try:
            return await read(corpus or _EMPTY)
        except StoreDamaged as exc:
            async with corpora.db.conn() as conn:
                fresh = await conn.corpus(user_id)
            if fresh != corpus:
                corpus = fresh
                continue
            log.warning("vector store cannot serve the catalog; repairing it", reason=str(exc))
            corpus = await repair(corpora, user_id)
    raise StoreUnavailable(STORE_UNAVAILABLE)


async def repair(corpora: Corpora, user_id: uuid.UUID) -> Corpus | None:
    """Under the user's lock: the catalog's version read in full, and when it cannot be,
    a store from before versions taken over or the store rebuilt from the catalog."""
    store = corpora.stores.for_user(user_id)
    async with corpora.db.tx(lock_user=user_id) as conn:
        corpus = await conn.corpus(user_id)
        if corpus is None or (corpus.rows == 0 and corpus.version is not None):
            return corpus
        corpora.check_embedder(corpus)
        if corpus.version is not None:
            try:
                await store.read(corpus.version, corpus.rows)
                return corpus  # readable after all: the failure was passing
            except StoreDamaged as exc:
                log.warning("vector store version unreadable", reason=str(exc))
        version, rows = None, corpus.rows
        if corpus.version is None:
            try:  # a store from before versions, taken over as it is when whole
                version = await store.write(None, rows, corpus.last_id, _no_rows(corpora))
            except StoreDamaged as exc:
                log.warning("vector store from before versions not whole", reason=str(exc))
        if version is None:
            writer = await _rebuild(corpora, conn, user_id, store, corpus.rows)
            version, rows = await _finished(writer), writer.rows
        await _publish(corpora, conn, user_id, rows, version)
        repaired = await conn.corpus(user_id)
    await store.published(version)
    return repaired


async def _publish(
    corpora: Corpora, conn: Conn, user_id: uuid.UUID, rows: int, version: str
) -> None:
    embedder = corpora.embedder
    await conn.publish_corpus(user_id, rows, embedder.name, embedder.dimension, version)


async def _finished(writer: StoreWriter) -> str:
    try:
        return await writer.finish()
    except BaseException:
        await writer.abandon()
        raise


def _no_rows(corpora: Corpora) -> Rows:
    return Rows([], [], np.zeros((0, corpora.embedder.dimension), dtype=np.float32), [])


async def _rebuild(
    corpora: Corpora, conn: Conn, user_id: uuid.UUID, store: ChunkStore, expected: int
) -> StoreWriter:
    log.warning("rebuilding the vector store from the catalog", chunks=expected)
    writer = await store.begin_empty()
    try:
        after = 0
        while page := await conn.chunk_page(user_id, after, REBUILD_PAGE):
            texts = [c.text for c in page]
            await writer.append(
                Rows(
                    [c.id for c in page],
                    texts,
                    await corpora.embedder.embed(texts),
                    [_metadata(c.document_id, c.title, c.position) for c in page],
                )
            )
            after = page[-1].id
        if writer.rows != expected:
            # the chunks are the truth; the count beside them is made to agree
            log.warning("catalog count set to its chunks", count=expected, chunks=writer.rows)
    except BaseException:
        await writer.abandon()
        raise
    log.info("vector store rebuilt from the catalog", chunks=writer.rows)
    return writer
