"""Ingestion: chunks land in the catalog and in the user's deeplake dataset on disk."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from deepmemory_service import deeplake_compat
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
    stored_ids, vectors = await store.matrix()
    assert sorted(stored_ids.tolist()) == ids
    assert vectors.shape == (len(ids), api.services.embedder.dimension)

    code, again = await api.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": [{"text": "One more."}]}
    )
    assert again["total_chunks"] == body["chunks"] + 1


async def test_users_stores_are_separate(api: Api) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    await api.ingest(a, 3)
    await api.ingest(b, 2)
    assert api.services.stores.for_user(a).path != api.services.stores.for_user(b).path
    ids_a, _ = await api.services.stores.for_user(a).matrix()
    ids_b, _ = await api.services.stores.for_user(b).matrix()
    assert (len(ids_a), len(ids_b)) == (3, 2)
    assert not set(ids_a.tolist()) & set(ids_b.tolist())


def test_ingest_command_reads_files_with_a_progress_bar(settings: Any, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Title\n\nSome markdown text about vectors.\n")
    (docs / "b.txt").write_text("Plain text about PostgreSQL leases.\n")
    (docs / "skip.bin").write_bytes(b"\x00\x01")
    user = str(uuid.uuid4())
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DEEPMEMORY_DATABASE_URL": settings.database.url,
        "DEEPMEMORY_DATA_DIR": settings.data_dir,
    }
    done = subprocess.run(
        [sys.executable, "-m", "deepmemory_service", "ingest", str(docs), "--user", user],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"ingested 2 file(s); user {user} now has 2 chunks" in done.stdout
    assert "ingesting" in done.stderr  # the progress bar

    bad = subprocess.run(
        [sys.executable, "-m", "deepmemory_service", "ingest", str(docs), "--user", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "not a valid UUID: 'nope'" in bad.stderr


async def test_a_store_made_by_another_embedder_is_a_clear_409(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    from deepmemory_service.embedders import HashingEmbedder

    first: Api = await api_factory()
    await first.ingest(user_id, 2)
    other: Api = await api_factory(embedder=HashingEmbedder(dimension=256))
    code, body = await other.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": [{"text": "more"}]}
    )
    assert code == 409
    assert "holds hashing vectors of dimension 1024" in body["detail"]
    assert "configured embedder is hashing (256)" in body["detail"]
