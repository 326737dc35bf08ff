"""How long a generate would take, said before it starts: at the provider's rate limit, or
at the pace the user's last runs' calls went, whichever is slower."""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from deepmemory_service.testing.standin_llm import StandinConfig, create_standin_app
from tests.conftest import Api, paragraph


async def estimate(api: Api, user: uuid.UUID) -> dict[str, Any]:
    code, body = await api.call("GET", "/deep-memory/estimate", params={"user_id": str(user)})
    assert code == 200, body
    return dict(body)


async def test_the_estimate_says_how_long_from_the_pace_seen_and_the_rate_limit(
    api_factory: Any, aiohttp_server: Any, settings: Any, user_id: uuid.UUID
) -> None:
    standin = await aiohttp_server(create_standin_app(StandinConfig(latency_ms=100)))
    llm = attrs.evolve(settings.llm, base_url=str(standin.make_url("/v1")))
    api: Api = await api_factory(attrs.evolve(settings, generator="llm", llm=llm, concurrency=2))
    await api.ingest(user_id, 8)
    # no call made yet and no rate limit: nothing to say how long
    before = await estimate(api, user_id)
    assert (before["expected_calls"], before["expected_minutes"]) == (8, None)

    code, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), "auto_train": True}
    )
    assert code == 202, body
    run = await api.wait_status(user_id, body["training_run_id"], "completed", timeout=60)
    await api.idle(user_id)
    code, added = await api.call(
        "POST",
        "/documents",
        json={
            "user_id": str(user_id),
            "documents": [{"text": paragraph(100 + i)} for i in range(20)],
        },
    )
    assert code == 201, added
    ahead = await estimate(api, user_id)
    assert ahead["expected_calls"] == 20
    # 8 calls of at least 100 ms, two at a time: at least 50 ms of the run's time per call
    async with api.services.db.conn() as conn:
        per_call = await conn.seconds_per_llm_call(user_id)
    assert per_call is not None
    assert per_call >= 0.05 * 0.9
    assert run["llm_calls"] == 8
    assert ahead["expected_minutes"] == round(20 * per_call / 60, 2)

    # a rate limit slower than that pace is what the estimate says
    limited = attrs.evolve(settings, generator="llm", llm=attrs.evolve(llm, rpm=10), concurrency=2)
    other: Api = await api_factory(limited)
    slow = await estimate(other, user_id)
    assert (slow["minutes_at_rate_limit"], slow["expected_minutes"]) == (2.0, 2.0)
