"""Search within the memory budget through the API, on the embedded PostgreSQL and real stores:
users' data held within it and the least recently searched evicted, the results' texts read
from the catalog, and the budget and what it holds in /metrics and the debug view."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest

from deepmemory_service.platform.config import SearchSettings, Settings
from deepmemory_service.storage.store import ChunkStore
from tests.conftest import ADMIN_TOKEN, Api, paragraph


async def test_users_are_searched_within_the_budget_and_it_shows(
    api_factory: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 100 chunks of 1,024 float32 dimensions: 410 KB a user; two fit in 1 MiB, three do not
    api: Api = await api_factory(
        attrs.evolve(
            settings, search=SearchSettings(memory_budget_mb=1, compact_above=1000, threads=1)
        )
    )
    users = [uuid.uuid4() for _ in range(3)]
    for u in users:
        assert await api.ingest(u, 100) == 100

    async def never(*args: object) -> list[str]:
        raise AssertionError("texts are read from the catalog, not the store")

    monkeypatch.setattr(ChunkStore, "read_texts", never)
    for u in users:
        code, body = await api.call(
            "GET", "/search", params={"user_id": str(u), "q": "component42 module2", "k": "3"}
        )
        assert code == 200, body
        top = body["results"][0]
        assert top["text"] == paragraph(42)
        assert all(
            r["text"] == paragraph(int(r["text"].split(":")[0].split()[1])) for r in body["results"]
        )

    stats = api.services.stores.search.stats()
    assert stats.budget_bytes == 2**20
    assert (stats.users, stats.misses, stats.evictions) == (2, 3, 1)
    assert stats.bytes == 2 * 100 * (1024 * 4 + 8) <= stats.budget_bytes

    async with api.client.get("/metrics") as resp:
        lines = (await resp.text()).splitlines()
    for line in (
        "deepmemory_search_memory_budget_bytes 1.04858e+06",
        "deepmemory_search_memory_users 2",
        "deepmemory_search_cache_misses_total 3",
        "deepmemory_search_cache_evictions_total 1",
    ):
        assert line in lines, line

    # the first user, evicted, searches again: read again, and another evicted in turn
    code, _ = await api.call("GET", "/search", params={"user_id": str(users[0]), "q": "module1"})
    assert code == 200
    code, view = await api.call("GET", "/debug/supervisors", headers={"X-Admin-Token": ADMIN_TOKEN})
    assert code == 200
    assert view["search_cache"] == {
        "budget_bytes": 2**20,
        "bytes": 2 * 100 * (1024 * 4 + 8),
        "users": 2,
        "hits": 0,
        "misses": 4,
        "evictions": 2,
        "too_large": 0,
    }
