"""Ingestion: chunks land in the catalog and in the user's deeplake dataset on disk."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import numpy as np

from deepmemory_service.db.database import Conn
from deepmemory_service.storage import deeplake_compat, vector_parts
from deepmemory_service.storage.embedders import EmbeddingError, HashingEmbedder
from deepmemory_service.testing.client import poll
from tests.conftest import Api


async def test_documents_are_chunked_embedded_and_stored(api: Api, user_id: uuid.UUID) -> None:
    long_text = "\n\n".join(
        f"Paragraph {i} talks about topic {i} in some detail. " * 8 for i in range(12)
    )
    code, body = await api.call(
        "POST",
        "/documents",
        json={
            "user_id": str(user_id),
            "documents": [{"title": "long", "text": long_text}, {"text": "A short note."}],
        },
    )
    assert code == 201, body
    assert body["chunks"] > 2
    assert body["total_chunks"] == body["chunks"]
    assert len(body["document_ids"]) == 2

    store = api.services.stores.for_user(user_id)
    # the store's path opens its newest version as a plain deeplake dataset
    ds = deeplake_compat.load().load(store.path, read_only=True, verbose=False)
    assert len(ds) == body["chunks"]
    assert set(ds.tensors) >= {"id", "text", "embedding", "metadata"}
    assert ds.info["embedder"] == "hashing"
    async with api.services.db.conn() as conn:
        ids = [
            r["id"]
            for r in await conn.raw.fetch(
                "SELECT id FROM chunks WHERE user_id = $1 ORDER BY id", user_id
            )
        ]
    stored = await store.latest()
    assert stored.ids.tolist() == ids
    assert stored.vectors.shape == (len(ids), api.services.embedder.dimension)

    code, again = await api.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": [{"text": "One more."}]}
    )
    assert again["total_chunks"] == body["chunks"] + 1


async def test_users_stores_are_separate(api: Api) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await api.ingest(a, 3)
    await api.ingest(b, 2)
    assert api.services.stores.for_user(a).path != api.services.stores.for_user(b).path
    ids_a = (await api.services.stores.for_user(a).latest()).ids
    ids_b = (await api.services.stores.for_user(b).latest()).ids
    assert (len(ids_a), len(ids_b)) == (3, 2)
    assert not set(ids_a.tolist()) & set(ids_b.tolist())


async def test_a_store_made_by_another_embedder_is_a_clear_409(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    """One check, on every path that reads the store: upload, search, training."""
    first: Api = await api_factory()
    await first.ingest(user_id, 12)
    other: Api = await api_factory(embedder=HashingEmbedder(dimension=256))
    mismatch = (
        "this user's vector store holds hashing vectors of dimension 1024, but the configured "
        "embedder is hashing (256)"
    )
    code, body = await other.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": [{"text": "more"}]}
    )
    assert code == 409
    assert body["detail"].startswith(mismatch)
    assert other.services.settings.data_dir not in body["detail"]  # no server path
    code, body = await other.call("GET", "/search", params={"user_id": str(user_id), "q": "x"})
    assert (code, body["detail"].startswith(mismatch)) == (409, True)

    code, body = await other.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), "auto_train": True}
    )
    assert code == 202, body
    run = await poll(
        lambda: other.run(user_id, body["training_run_id"]),
        lambda run: run["status"] in ("training_failed", "completed"),
        lambda run: f"run stayed {run['status']}",
    )
    assert run["status"] == "training_failed"
    assert run["error_message"].startswith(f"Training failed: {mismatch}")


async def test_the_documents_list_is_the_users_newest_first_through_the_gateway(
    api: Api, user_id: uuid.UUID
) -> None:
    from deepmemory_service.gateway.auth import mint_token

    docs = [{"title": "first.md", "text": "Alpha. " * 400}, {"title": "second.txt", "text": "B."}]
    code, added = await api.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": docs}
    )
    assert code == 201, added
    await api.ingest(uuid.uuid4(), 2)  # another user's documents are not listed

    token = mint_token(api.services.settings, user_id, 600)
    async with api.client.get(
        "/api/documents", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200
        listing = await resp.json()
    assert [(d["title"], d["chunk_count"]) for d in listing["documents"]] == [
        ("second.txt", 1),
        ("first.md", added["chunks"] - 1),
    ]
    assert [d["id"] for d in listing["documents"]] == added["document_ids"][::-1]
    assert all(d["created_at"].endswith("+00:00") for d in listing["documents"])
    assert listing["total_documents"] == 2
    assert listing["total_chunks"] == added["total_chunks"]
    assert listing["max_body_bytes"] == api.services.settings.http.max_body_bytes

    code, first = await api.call(
        "GET", "/documents", params={"user_id": str(user_id), "limit": "1"}
    )
    assert code == 200
    assert [d["title"] for d in first["documents"]] == ["second.txt"]
    assert first["total_documents"] == 2


async def test_unchanged_documents_are_skipped_when_asked(api: Api, user_id: uuid.UUID) -> None:
    docs = [{"title": "a.md", "text": "Leases are renewed."}, {"text": "Untitled text."}]
    body = {"user_id": str(user_id), "documents": docs, "skip_unchanged": True}
    code, first = await api.call("POST", "/documents", json=body)
    assert (code, first["skipped"], len(first["document_ids"])) == (201, [], 2)

    changed = {"title": "a.md", "text": "Leases are renewed every ten seconds."}
    again = {**body, "documents": [*docs, changed, changed]}
    code, second = await api.call("POST", "/documents", json=again)
    assert code == 201, second
    # the two already there and the repeat within this request are skipped; the change is new
    assert second["skipped"] == [0, 1, 3]
    assert (len(second["document_ids"]), second["chunks"]) == (1, 1)
    assert second["total_chunks"] == 3

    code, nothing = await api.call("POST", "/documents", json=body)
    assert (code, nothing["document_ids"], nothing["chunks"]) == (201, [], 0)
    assert (nothing["skipped"], nothing["total_chunks"]) == ([0, 1], 3)

    # without the flag, the same document is added again (the contract's behaviour)
    code, plain = await api.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": docs[:1]}
    )
    assert (code, plain["skipped"], plain["total_chunks"]) == (201, [], 4)


async def test_titles_are_bounded_and_a_listing_stays_small(api: Api, user_id: uuid.UUID) -> None:
    """A title of 500 characters is kept whole (one more is a 422, see test_bad_input);
    titles stored longer before they were bounded are listed cut, ending in "…", so that
    forty 1 MB titles no longer make a 40 MB listing."""
    title = "t" * 500
    code, added = await api.call(
        "POST",
        "/documents",
        json={"user_id": str(user_id), "documents": [{"title": title, "text": "x"}]},
    )
    assert code == 201, added
    admin = await asyncpg.connect(api.services.db.url)
    try:
        await admin.execute(
            "INSERT INTO documents (id, user_id, title, chunk_count) "
            "SELECT gen_random_uuid(), $1, repeat('é', 1048576), 0 FROM generate_series(1, 40)",
            user_id,
        )
    finally:
        await admin.close()
    async with api.client.get(
        "/v1/api/documents", params={"user_id": str(user_id)}, headers=api.headers
    ) as resp:
        assert resp.status == 200
        raw = await resp.read()
    listing = json.loads(raw)
    titles = [d["title"] for d in listing["documents"]]
    assert sorted(set(titles)) == sorted({"é" * 499 + "…", title})
    assert listing["total_documents"] == 41
    # 41 titles of at most 500 characters (6 bytes each as JSON escapes), and the rest
    assert len(raw) < 41 * (500 * 6 + 200)


async def test_an_upload_in_parts_is_stored_row_for_row(api: Api, user_id: uuid.UUID) -> None:
    """An upload larger than a part (`vector_parts.PART`) is embedded and written part by
    part: every chunk's row holds its own id, text and vector, as if embedded at once."""
    texts = [f"note {i} on subject{i % 17} and matter{i % 29} number {i}" for i in range(600)]
    assert len(texts) > 2 * vector_parts.PART
    code, body = await api.call(
        "POST",
        "/documents",
        json={"user_id": str(user_id), "documents": [{"text": t} for t in texts[:10]]},
    )
    assert code == 201, body
    code, body = await api.call(
        "POST",
        "/documents",
        json={"user_id": str(user_id), "documents": [{"text": t} for t in texts[10:]]},
    )
    assert code == 201, body
    assert body["total_chunks"] == 600
    async with api.services.db.conn() as conn:
        rows = await conn.raw.fetch(
            "SELECT id, text FROM chunks WHERE user_id = $1 ORDER BY id", user_id
        )
    stored = await api.services.stores.for_user(user_id).latest()
    assert stored.ids.tolist() == [r["id"] for r in rows]
    assert list(stored.texts) == [r["text"] for r in rows] == texts
    assert np.array_equal(stored.vectors, HashingEmbedder().embed_sync(texts))


async def test_an_embedding_failing_mid_upload_stores_nothing(
    api: Api, user_id: uuid.UUID, monkeypatch: Any
) -> None:
    await api.ingest(user_id, 3)
    embed = HashingEmbedder.embed
    calls = 0

    async def failing_second_part(self: HashingEmbedder, texts: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise EmbeddingError("the embeddings API kept refusing (HTTP 503)")
        return await embed(self, texts)

    monkeypatch.setattr(HashingEmbedder, "embed", failing_second_part)
    code, body = await api.call(
        "POST",
        "/documents",
        json={
            "user_id": str(user_id),
            "documents": [{"text": f"part note {i}"} for i in range(vector_parts.PART + 5)],
        },
    )
    assert code == 502, body
    assert body == {"detail": "the embeddings API kept refusing (HTTP 503)"}
    assert calls == 2
    async with api.services.db.conn() as conn:
        count = await conn.raw.fetchval("SELECT count(*) FROM chunks WHERE user_id = $1", user_id)
    assert count == 3
    assert (await api.services.stores.for_user(user_id).latest()).rows == 3
    monkeypatch.setattr(HashingEmbedder, "embed", embed)
    code, body = await api.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": [{"text": "after"}]}
    )
    assert code == 201, body
    assert body["total_chunks"] == 4


async def test_a_catalog_insert_failing_beside_the_write_stores_nothing(
    api: Api, user_id: uuid.UUID, monkeypatch: Any
) -> None:
    """The catalog's insert runs while the store's version is written (`corpus._beside`):
    when it fails, the write is stopped and the upload stores nothing, in either."""
    await api.ingest(user_id, 3)
    insert = Conn.add_documents

    async def failing(self: Conn, *args: Any) -> None:
        await insert(self, *args)  # the rows sent, then the statement fails
        raise asyncpg.exceptions.CheckViolationError("a check failed")

    monkeypatch.setattr(Conn, "add_documents", failing)
    code, body = await api.call(
        "POST",
        "/documents",
        json={
            "user_id": str(user_id),
            "documents": [{"text": f"beside note {i}"} for i in range(2 * vector_parts.PART)],
        },
    )
    assert code == 500, body
    async with api.services.db.conn() as conn:
        count = await conn.raw.fetchval("SELECT count(*) FROM chunks WHERE user_id = $1", user_id)
        corpus = await conn.corpus(user_id)
    assert count == 3
    assert corpus is not None
    assert corpus.rows == 3
    store = api.services.stores.for_user(user_id)
    assert (await store.read(corpus.version, corpus.rows)).rows == 3
    monkeypatch.setattr(Conn, "add_documents", insert)
    code, body = await api.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": [{"text": "after"}]}
    )
    assert code == 201, body
    assert body["total_chunks"] == 4
    latest = await store.latest()
    async with api.services.db.conn() as conn:
        ids = [
            r["id"]
            for r in await conn.raw.fetch(
                "SELECT id FROM chunks WHERE user_id = $1 ORDER BY id", user_id
            )
        ]
    assert latest.ids.tolist() == ids
