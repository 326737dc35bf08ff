"""Ingestion: chunks land in the catalog and in the user's deeplake dataset on disk."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from deepmemory_service import deeplake_compat
from deepmemory_service.embedders import HashingEmbedder
from tests.conftest import Api, poll


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
