"""A provider's rate limit, as a user and an operator see it while calls wait: one service
in process against the stand-in LLM enforcing requests per minute per API key (the limit
shared by real `serve` processes: processes/test_shared_budget.py)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import attrs

from deepmemory_service.platform.config import Settings
from deepmemory_service.testing.client import poll
from deepmemory_service.testing.standin_llm import (
    CONFIG,
    STATS,
    StandinConfig,
    create_standin_app,
)
from tests.conftest import Api, read_stream


@attrs.frozen
class Limited:
    api: Api
    standin: Any


async def limited_service(
    api_factory: Any, aiohttp_server: Any, settings: Settings, rpm: float, **llm: Any
) -> Limited:
    standin = await aiohttp_server(create_standin_app(StandinConfig(rpm=rpm, latency_ms=5)))
    configured = attrs.evolve(
        settings,
        generator="llm",
        llm=attrs.evolve(
            settings.llm,
            base_url=str(standin.make_url("/v1")),
            rpm=rpm,
            backoff_base_s=0.01,
            **llm,
        ),
    )
    return Limited(await api_factory(configured), standin)


async def test_waiting_on_the_limit_is_visible_in_progress_debug_and_metrics(
    api_factory: Any, aiohttp_server: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    """At 120 calls a minute, 8 chunks take about 4 s: the progress stream says the run
    waits on the provider's limit, the debug view and /metrics show the budget and the
    calls waiting, and the run's tokens and cost are the stand-in's count."""
    svc = await limited_service(
        api_factory,
        aiohttp_server,
        settings,
        rpm=120,
        price_input_per_mtok=0.15,
        price_output_per_mtok=0.60,
    )
    api = svc.api
    await api.ingest(user_id, 8)
    _, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), "questions_per_chunk": 2}
    )
    stream = asyncio.create_task(read_stream(api, user_id, body["job_id"]))

    view = await poll(
        api.debug,
        lambda v: v["llm_budget"]["calls_waiting"] > 0,
        lambda v: f"no call waited: {v['llm_budget']}",
    )
    budget = view["llm_budget"]
    assert (budget["rpm"], budget["limited"], budget["instance_share"]) == (120, True, 1.0)
    (sup,) = view["supervisors"]
    assert sup["calls_waiting"] > 0
    async with api.client.get("/metrics") as resp:
        metrics = await resp.text()
    assert "deepmemory_llm_budget_rpm 120" in metrics
    assert "deepmemory_llm_budget_calls_waiting " in metrics

    events = await asyncio.wait_for(stream, 60)
    waiting = [e for e in events if e.event == "progress" and e.data.get("waiting_on_provider")]
    assert waiting, [e.data for e in events if e.event == "progress"]
    assert "waiting on the provider's rate limit" in waiting[0].data["message"]
    assert events[-1].event == "done"
    # a wait is told once, not re-sent (and stored) twice a second while it lasts
    progress = [e.data for e in events if e.event == "progress"]
    copies = [a for a, b in itertools.pairwise(progress) if a == b]
    assert not copies, copies

    run = await api.run(user_id, body["training_run_id"])
    stats = svc.standin.app[STATS]
    assert run["llm_calls"] == stats.calls == 8
    assert run["prompt_tokens"] == stats.prompt_tokens > 0
    assert run["completion_tokens"] == stats.completion_tokens > 0
    expected = (stats.prompt_tokens * 0.15 + stats.completion_tokens * 0.60) / 1e6
    assert abs(run["cost_usd"] - expected) < 1e-6
    async with api.client.get("/metrics") as resp:
        metrics = await resp.text()
    assert f"deepmemory_llm_prompt_tokens_total {stats.prompt_tokens}" in metrics
    assert "deepmemory_llm_cost_usd_total " in metrics


async def spent_by_job(api: Api, run_id: str) -> list[tuple[int, int, int]]:
    """(calls, prompt tokens, completion tokens) of each of the run's jobs, oldest first."""
    async with api.services.db.conn() as conn:
        rows = await conn.raw.fetch(
            "SELECT llm_calls, prompt_tokens, completion_tokens FROM jobs "
            "WHERE run_id = $1 ORDER BY created_at",
            uuid.UUID(run_id),
        )
    return [(r["llm_calls"], r["prompt_tokens"], r["completion_tokens"]) for r in rows]


async def test_each_job_keeps_what_it_spent_and_the_run_adds_them_up(
    api_factory: Any, aiohttp_server: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    """A run that fails part-way and is proceeded: the first job keeps the tokens of the
    answers it got, the second those of the rest, and the run shows both together (the
    stand-in's count of what it billed)."""
    two_workers = attrs.evolve(settings, concurrency=2)
    svc = await limited_service(api_factory, aiohttp_server, two_workers, rpm=0, max_retries=0)
    api, stats = svc.api, svc.standin.app[STATS]
    await api.ingest(user_id, 12)
    svc.standin.app[CONFIG].fail_after = 5
    _, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), "questions_per_chunk": 2}
    )
    run_id = body["training_run_id"]
    failed = await api.wait_status(user_id, run_id, "generating_failed")
    await api.idle(user_id)
    billed_first = (stats.prompt_tokens, stats.completion_tokens)
    assert stats.successes == 5
    assert (failed["prompt_tokens"], failed["completion_tokens"]) == billed_first
    ((calls, *first),) = await spent_by_job(api, run_id)
    assert tuple(first) == billed_first
    assert calls == failed["llm_calls"] >= 6  # the five answers and at least one failure

    svc.standin.app[CONFIG].fail_after = None
    code, _ = await api.call(
        "POST", "/deep-memory/proceed", json={"user_id": str(user_id), "training_run_id": run_id}
    )
    assert code == 202
    run = await api.wait_status(user_id, run_id, "generated")
    await api.idle(user_id)
    assert stats.successes == 12
    jobs = await spent_by_job(api, run_id)
    assert len(jobs) == 2
    assert jobs[1] == (
        12 - 5,
        stats.prompt_tokens - billed_first[0],
        stats.completion_tokens - billed_first[1],
    )
    assert (run["prompt_tokens"], run["completion_tokens"]) == (
        stats.prompt_tokens,
        stats.completion_tokens,
    )
    assert run["llm_calls"] == jobs[0][0] + jobs[1][0]
