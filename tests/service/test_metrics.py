"""`GET /metrics`: Prometheus text, runs by status read at most once per interval whatever the
scrape rate (the cache on its own: unit/test_metrics_cache.py), and a bearer token when one
is configured."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import attrs

from deepmemory_service.platform.config import Settings
from tests.conftest import Api


async def scrape(api: Api, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with api.client.get("/metrics", headers=headers or {}) as resp:
        return resp.status, await resp.text()


async def test_runs_by_status_are_read_once_per_interval_not_per_scrape(
    api: Api, user_id: uuid.UUID
) -> None:
    await api.ingest(user_id, 3)
    _, accepted = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    await api.wait_status(user_id, accepted["training_run_id"], "generated")
    code, text = await scrape(api)
    assert code == 200
    assert 'deepmemory_runs{status="generated"} 1' in text.splitlines()
    assert "deepmemory_sse_subscribers 0" in text.splitlines()

    results = await asyncio.gather(*(scrape(api) for _ in range(20)))
    assert {code for code, _ in results} == {200}
    assert api.services.metrics.run_counts.reads == 1, "a GROUP BY over all runs per scrape"


async def test_metrics_need_the_token_when_one_is_set(api_factory: Any, settings: Settings) -> None:
    api: Api = await api_factory(attrs.evolve(settings, metrics_token="scrape-secret"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-secret"}):
        code, text = await scrape(api, headers)
        assert code == 401, headers
        assert "Missing or invalid metrics token" in text
    code, text = await scrape(api, {"Authorization": "Bearer scrape-secret"})
    assert code == 200
    assert "# TYPE deepmemory_runs gauge" in text


async def test_metrics_are_open_when_no_token_is_set(api: Api) -> None:
    assert api.services.settings.metrics_token == ""
    code, text = await scrape(api)
    assert code == 200
    assert "# TYPE deepmemory_runs gauge" in text
