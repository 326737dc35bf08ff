"""A provider's rate limit, shared: real `serve` processes on one PostgreSQL against the
stand-in LLM enforcing requests per minute per API key (what a user and an operator see
while calls wait: service/test_rate_limits.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from deepmemory_service.testing.client import poll
from deepmemory_service.testing.standin_llm import CONFIG, LIMITS, STATS
from tests.cluster import Instance, ingest
from tests.conftest import assert_one_pair_set_per_chunk


async def generated(instance: Instance, user: uuid.UUID, run_id: str) -> int:
    return int((await instance.run(user, run_id))["generated_chunks"])


async def test_two_instances_share_one_budget_fairly_between_four_users(cluster: Any) -> None:
    """Four users, three on one instance and one on the other, runs of 40 to 100 chunks,
    one key limited to 40 calls a second: while all four generate each gets a quarter
    (±20%), the provider refuses almost nothing, and every run ends with exactly one pair
    set per chunk."""
    start, db_url, standin = cluster
    rpm = 2400
    cfg = standin.app[CONFIG]
    cfg.rpm, cfg.latency_ms = rpm, 20
    standin.app[LIMITS].clear()
    env = {
        "DEEPMEMORY_LLM_RPM": str(rpm),
        "DEEPMEMORY_CONCURRENCY": "8",
        "DEEPMEMORY_ADMIN_TOKEN": "x",
    }
    a, b = await start(**env), await start(**env)

    sizes = [40, 60, 80, 100]
    users = [uuid.uuid4() for _ in sizes]
    places = [a, a, b, a]
    for user, size, place in zip(users, sizes, places, strict=True):
        await ingest(place, user, size)
    standin.app[STATS].clear()
    replies = await asyncio.gather(
        *(
            place.call(
                "POST", "/deep-memory/generate", json={"user_id": str(u), "questions_per_chunk": 1}
            )
            for u, place in zip(users, places, strict=True)
        )
    )
    run_ids = [body["training_run_id"] for code, body in replies if code == 202]
    assert len(run_ids) == 4, replies

    async def progress() -> list[int]:
        return list(
            await asyncio.gather(
                *(
                    generated(place, u, r)
                    for place, u, r in zip(places, users, run_ids, strict=True)
                )
            )
        )

    # the window in which all four generate: from each having begun to the first finishing
    begun = await poll(progress, lambda done: min(done) > 0, lambda d: f"not all began: {d}")
    ended = await poll(
        progress,
        lambda done: any(d >= s for d, s in zip(done, sizes, strict=True)),
        lambda d: f"none finished: {d}",
    )
    shares = [e - s for s, e in zip(begun, ended, strict=True)]
    fair = sum(shares) / 4
    assert all(abs(s - fair) <= 0.2 * fair for s in shares), f"shares {shares}, fair {fair:.1f}"

    for place, user, run_id in zip(places, users, run_ids, strict=True):
        await place.until(user, run_id, "generated")
        await assert_one_pair_set_per_chunk(db_url, run_id, 1)
    stats = standin.app[STATS]
    assert stats.successes == sum(sizes)
    assert stats.rate_limited <= 0.05 * stats.calls, stats.as_json()


async def test_one_instance_alone_would_be_refused_without_the_shared_budget(
    cluster: Any,
) -> None:
    """The control for the test above: the same two instances each assuming the whole
    limit is theirs (no RPM configured) meet the provider's 429s."""
    start, _, standin = cluster
    cfg = standin.app[CONFIG]
    cfg.rpm, cfg.latency_ms = 600, 20
    standin.app[LIMITS].clear()
    env = {"DEEPMEMORY_CONCURRENCY": "8", "DEEPMEMORY_LLM_MAX_RETRIES": "20"}
    a, b = await start(**env), await start(**env)
    users = [uuid.uuid4(), uuid.uuid4()]
    for user, place in zip(users, (a, b), strict=True):
        await ingest(place, user, 30)
    standin.app[STATS].clear()
    for user, place in zip(users, (a, b), strict=True):
        code, _ = await place.call(
            "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 1}
        )
        assert code == 202

    async def refused() -> int:
        return int(standin.app[STATS].rate_limited)

    await poll(refused, lambda n: n > 5, lambda n: f"only {n} calls refused")
