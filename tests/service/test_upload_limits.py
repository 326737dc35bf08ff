"""One user cannot stall everyone: a bound on one user's uploads in progress (429 with
Retry-After), a bound on documents per request (422), and uploads that wait for the user's
turn without holding a database connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import attrs

from deepmemory_service.platform.config import Settings
from deepmemory_service.storage.embedders import HashingEmbedder
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.testing.client import poll
from deepmemory_service.vectors import Matrix
from tests.conftest import Api


class HeldEmbedder(HashingEmbedder):
    """Embeds only once `release` is set; `entered` tells that a call is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def embed(self, texts: Sequence[str]) -> Matrix:
        if texts and texts[0].startswith("held"):
            self.entered.set()
            await self.release.wait()
        return await super().embed(texts)


def upload(api: Api, user: uuid.UUID, *texts: str) -> Any:
    return api.call(
        "POST",
        "/documents",
        json={"user_id": str(user), "documents": [{"text": t} for t in texts]},
    )


def limited(settings: Settings, **uploads: int) -> Settings:
    return attrs.evolve(settings, uploads=attrs.evolve(settings.uploads, **uploads))


async def test_one_users_uploads_in_progress_are_bounded_with_a_429(
    api_factory: Any, settings: Settings
) -> None:
    embedder = HeldEmbedder()
    api: Api = await api_factory(limited(settings, per_user=1), embedder=embedder)
    hog, other = uuid.uuid4(), uuid.uuid4()
    first = asyncio.create_task(upload(api, hog, "held: a slow one"))
    await asyncio.wait_for(embedder.entered.wait(), 10)

    code, body = await upload(api, hog, "one more")
    assert code == 429, body
    assert body == {
        "detail": "Too many uploads of this user in progress (at most 1 at once); retry shortly"
    }
    async with api.client.post(
        "/v1/api/documents",
        headers=api.headers,
        json={"user_id": str(hog), "documents": [{"text": "and another"}]},
    ) as resp:
        assert (resp.status, resp.headers.get("Retry-After")) == (429, "1")
    # another user is not held up by it
    code, body = await upload(api, other, "someone else's note")
    assert code == 201, body

    embedder.release.set()
    code, body = await first
    assert code == 201, body
    code, body = await upload(api, hog, "after the first one")
    assert (code, body["total_chunks"]) == (201, 2)


async def test_documents_per_request_are_bounded(
    api_factory: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    api: Api = await api_factory(limited(settings, max_documents=3))
    code, body = await upload(api, user_id, "a", "b", "c", "d")
    assert code == 422, body
    assert body == {"detail": "documents: at most 3 per request, got 4"}
    code, body = await upload(api, user_id, "a", "b", "c")
    assert code == 201, body


async def test_an_upload_waiting_for_its_turn_holds_no_database_connection(
    api_factory: Any, settings: Settings, monkeypatch: Any
) -> None:
    """With a pool of two connections, one user's writing upload and two more waiting for
    their turn leave a connection for everyone else."""
    entered, release = asyncio.Event(), asyncio.Event()
    begin = ChunkStore.begin

    async def held_begin(self: ChunkStore, *args: Any) -> Any:
        entered.set()
        await release.wait()
        return await begin(self, *args)

    # the first step of a store's write, under the user's lock
    monkeypatch.setattr(ChunkStore, "begin", held_begin)
    small_pool = attrs.evolve(
        limited(settings, per_user=3),
        database=attrs.evolve(settings.database, pool_min=1, pool_max=2),
    )
    api: Api = await api_factory(small_pool)
    hog, other = uuid.uuid4(), uuid.uuid4()
    uploads = [asyncio.create_task(upload(api, hog, f"note {i}")) for i in range(3)]
    await asyncio.wait_for(entered.wait(), 10)

    async def queued() -> int:
        return api.services.uploads.waiting

    await poll(queued, lambda n: n == 2, lambda n: f"{n} uploads queued, wanted 2", 10)

    code, body = await asyncio.wait_for(
        api.call("GET", "/deep-memory/settings", params={"user_id": str(other)}), 5
    )
    assert code == 200, body
    release.set()
    assert [code for code, _ in await asyncio.gather(*uploads)] == [201, 201, 201]
