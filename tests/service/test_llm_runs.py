"""A run against the LLM stand-in: it fails with the upstream error, and proceed completes it
with one call per chunk left (the generator on its own: unit/test_llm_generator.py)."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest

from deepmemory_service.testing.standin_llm import CONFIG, STATS, StandinConfig, create_standin_app
from tests.conftest import Api
from tests.unit.test_llm_generator import KEY, llm_settings


@pytest.fixture
async def standin(aiohttp_server: Any) -> Any:
    return await aiohttp_server(create_standin_app(StandinConfig(api_key=KEY)))


async def test_a_run_fails_with_the_upstream_error_and_proceed_completes_it(
    standin: Any, api_factory: Any, settings: Any
) -> None:
    llm = attrs.evolve(llm_settings(standin, max_retries=1), backoff_base_s=0.0)
    service = attrs.evolve(settings, generator="llm", llm=llm)
    api: Api = await api_factory(service)
    user = uuid.uuid4()
    await api.ingest(user, 30)
    standin.app[CONFIG].fail_after = 12
    _, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 2}
    )
    failed = await api.wait_status(user, body["training_run_id"], "generating_failed")
    await api.idle(user)
    done = failed["generated_chunks"]
    assert (
        "LLM call failed after 2 attempts: HTTP 500 from chat/completions"
        in failed["error_message"]
    )
    assert f"({done}/30 chunks done)" in failed["error_message"]

    standin.app[CONFIG].fail_after = None
    successes_before = standin.app[STATS].successes
    _, reply = await api.call(
        "POST",
        "/deep-memory/proceed",
        json={"user_id": str(user), "training_run_id": body["training_run_id"]},
    )
    assert reply["message"] == f"Resuming generation from chunk {done}/30"
    run = await api.wait_status(user, body["training_run_id"], "generated")
    # exactly one successful call per uncovered chunk on resume, none for covered ones
    assert standin.app[STATS].successes - successes_before == 30 - done
    assert set(standin.app[STATS].per_chunk.values()) == {1}
    assert len(standin.app[STATS].per_chunk) == 30
    async with api.services.db.conn() as conn:
        per_chunk = await conn.raw.fetch(
            "SELECT chunk_id, count(*) AS n FROM training_pairs WHERE run_id = $1 "
            "GROUP BY chunk_id",
            uuid.UUID(body["training_run_id"]),
        )
    assert len(per_chunk) == 30
    assert {r["n"] for r in per_chunk} == {2}
    assert run["pair_count"] == 60
