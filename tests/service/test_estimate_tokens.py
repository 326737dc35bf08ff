"""The estimate's prompt tokens counted by the model's own tokenizer where the server has one
(a stand-in speaking llama-server's `/apply-template` and `/tokenize`): exactly what the run
then records, before any reply; elsewhere a guess, and said to be one (against a real model:
tests/real_llm/)."""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from deepmemory_service.testing.standin_llm import STATS, StandinConfig, create_standin_app
from tests.conftest import Api
from tests.service.test_estimate_time import estimate


async def _api(api_factory: Any, aiohttp_server: Any, settings: Any, cfg: StandinConfig) -> Any:
    standin = await aiohttp_server(create_standin_app(cfg))
    llm = attrs.evolve(settings.llm, base_url=str(standin.make_url("/v1")))
    api: Api = await api_factory(attrs.evolve(settings, generator="llm", llm=llm))
    return api, standin


async def _generate(api: Api, user: uuid.UUID) -> dict[str, Any]:
    code, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 2}
    )
    assert code == 202, body
    run = await api.wait_status(user, body["training_run_id"], "generated", timeout=60)
    await api.idle(user)
    return run


async def test_prompt_tokens_counted_by_the_tokenizer_are_what_the_run_records(
    api_factory: Any, aiohttp_server: Any, settings: Any, user_id: uuid.UUID
) -> None:
    api, standin = await _api(
        api_factory, aiohttp_server, settings, StandinConfig(slots=2, tokenizer=True)
    )
    await api.ingest(user_id, 40)  # more than the sample: the rest at its tokens per character
    ahead = await _estimate(api, user_id)
    assert ahead["estimate_basis"] == "tokenizer"
    run = await _generate(api, user_id)
    assert run["prompt_tokens"] == standin.app[STATS].prompt_tokens
    # the sample's rate for the other 8 chunks' texts: within 2 % of the count
    assert abs(ahead["prompt_tokens"] - run["prompt_tokens"]) <= 0.02 * run["prompt_tokens"]


async def test_the_whole_corpus_in_the_sample_is_counted_exactly(
    api_factory: Any, aiohttp_server: Any, settings: Any, user_id: uuid.UUID
) -> None:
    api, _ = await _api(api_factory, aiohttp_server, settings, StandinConfig(tokenizer=True))
    await api.ingest(user_id, 12)
    ahead = await _estimate(api, user_id)
    run = await _generate(api, user_id)
    assert ahead["prompt_tokens"] == run["prompt_tokens"] > 0


async def _estimate(api: Api, user: uuid.UUID) -> dict[str, Any]:
    code, body = await api.call(
        "GET",
        "/deep-memory/estimate",
        params={"user_id": str(user), "questions_per_chunk": "2"},
    )
    assert code == 200, body
    return dict(body)


async def test_without_a_tokenizer_the_estimate_says_it_is_a_guess_until_replies_calibrate(
    api_factory: Any, aiohttp_server: Any, settings: Any, user_id: uuid.UUID
) -> None:
    api, _ = await _api(api_factory, aiohttp_server, settings, StandinConfig())
    await api.ingest(user_id, 6)
    assert (await estimate(api, user_id))["estimate_basis"] == "guess"
    await _generate(api, user_id)
    other = uuid.uuid4()
    await api.ingest(other, 6)
    assert (await estimate(api, other))["estimate_basis"] == "replies"


async def test_the_offline_generator_makes_no_calls_to_count(api: Api, user_id: uuid.UUID) -> None:
    await api.ingest(user_id, 3)
    body = await estimate(api, user_id)
    assert (body["estimate_basis"], body["prompt_tokens"]) == ("none", 0)
