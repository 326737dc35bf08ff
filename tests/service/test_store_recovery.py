"""A store brought back in line with the catalog on its first use: a store from before
versions taken over, a damaged one rebuilt from the catalog's texts (the versions on their
own: unit/test_store_versions.py)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import asyncpg
import numpy as np

from deepmemory_service.storage import deeplake_compat
from tests.conftest import Api


async def test_a_store_from_before_versions_is_taken_over_on_its_first_search(
    api: Api, user_id: uuid.UUID
) -> None:
    """What the catalog and store of an earlier release look like: no version named, the
    dataset a plain folder at the store's path."""
    await api.ingest(user_id, 6)
    store = api.services.stores.for_user(user_id)
    await make_legacy(api, user_id)
    code, found = await api.call(
        "GET", "/search", params={"user_id": str(user_id), "q": "component3 module3"}
    )
    assert code == 200, found
    assert found["results"][0]["text"].startswith("Section 3:")
    async with api.services.db.conn() as conn:
        corpus = await conn.corpus(user_id)
    assert corpus is not None
    assert (corpus.version is not None, corpus.rows) == (True, 6)
    assert os.readlink(store.path).startswith(f"{user_id}.versions/")


async def test_a_damaged_store_is_rebuilt_from_the_catalog(api: Api, user_id: uuid.UUID) -> None:
    """An earlier release's store left with tensors of unequal length (a crash mid-flush):
    the next upload rebuilds it from the catalog's texts, and searches work again."""
    await api.ingest(user_id, 6)
    legacy = await make_legacy(api, user_id)
    ds = deeplake_compat.load().load(str(legacy), verbose=False, lock_enabled=False)
    ds.embedding.append(np.ones(api.services.embedder.dimension, dtype=np.float32))
    ds.flush()
    code, body = await api.call(
        "POST",
        "/documents",
        json={"user_id": str(user_id), "documents": [{"text": "Okapis browse at dusk."}]},
    )
    assert code == 201, body
    assert body["total_chunks"] == 7
    code, found = await api.call("GET", "/search", params={"user_id": str(user_id), "q": "okapis"})
    assert code == 200, found
    assert found["results"][0]["text"] == "Okapis browse at dusk."
    assert len((await api.services.stores.for_user(user_id).latest()).ids) == 7


def as_legacy(link: Path) -> None:
    folder = link.parent / os.readlink(link)
    link.unlink()
    shutil.copytree(folder, link)
    shutil.rmtree(link.with_name(link.name + ".versions"))


async def make_legacy(api: Api, user_id: uuid.UUID) -> Path:
    """Turns the user's versioned store into the layout of a store from before versions."""
    link = Path(api.services.stores.for_user(user_id).path)
    as_legacy(link)
    conn = await asyncpg.connect(api.services.settings.database.url)
    try:
        await conn.execute("UPDATE corpora SET store_version = NULL WHERE user_id = $1", user_id)
    finally:
        await conn.close()
    api.services.stores._stores.clear()  # a restarted service: nothing read yet
    return link
