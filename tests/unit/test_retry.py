"""The one retry policy: its arithmetic, its runner, and the clients that use it."""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from deepmemory_service.platform.retry import RetryPolicy, retry, retry_after
from deepmemory_service.storage.embedders import EmbeddingError, OpenAIEmbedder
from tests.conftest import embeddings_api


def test_backoff_doubles_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(attempts=6, base_s=0.2, max_s=1.0, jitter=False)
    assert [policy.delay(a) for a in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_full_jitter_stays_under_the_ceiling_and_spreads() -> None:
    policy = RetryPolicy(attempts=6, base_s=0.5, max_s=4.0)
    rng = random.Random(7)
    delays = [policy.delay(3, rng=rng) for _ in range(500)]
    assert all(0 <= d <= 4.0 for d in delays)
    # spread over [0, ceiling]
    assert min(delays) < 0.5
    assert max(delays) > 3.5


def test_retry_after_is_a_floor_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=3, base_s=0.1, max_s=5.0)
    rng = random.Random(1)
    assert all(policy.delay(0, 2.0, rng) == 2.0 for _ in range(50))
    assert policy.delay(0, 60.0, rng) == 5.0  # a server asking for a minute waits the cap
    assert policy.delay(0, 0.0, rng) <= 0.1


def test_retry_after_header_forms() -> None:
    assert retry_after("3") == 3.0
    assert retry_after("0.25") == 0.25
    assert retry_after("-4") == 0.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= (retry_after(future) or 0) <= 31


async def test_the_runner_retries_what_it_may_and_raises_the_last_error() -> None:
    policy = RetryPolicy(attempts=3, base_s=0.0, max_s=0.0, jitter=False)
    tries: list[int] = []
    retried: list[tuple[str, int]] = []

    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError(f"try {len(tries)}")
        return "ok"

    result = await retry(
        flaky,
        policy,
        retry_on=lambda e: isinstance(e, ConnectionError),
        on_retry=lambda e, attempt, _: retried.append((str(e), attempt)),
    )
    assert result == "ok"
    assert retried == [("try 1", 0), ("try 2", 1)]

    tries.clear()

    async def always() -> str:
        tries.append(1)
        raise ConnectionError(f"try {len(tries)}")

    with pytest.raises(ConnectionError, match="try 3"):
        await retry(always, policy, retry_on=lambda e: isinstance(e, ConnectionError))
    assert len(tries) == 3

    tries.clear()

    async def fatal() -> str:
        tries.append(1)
        raise ValueError("not worth another try")

    with pytest.raises(ValueError, match="not worth"):
        await retry(fatal, policy, retry_on=lambda e: isinstance(e, ConnectionError))
    assert len(tries) == 1


async def test_the_embeddings_client_honours_retry_after(aiohttp_server: Any) -> None:
    """A 429 with `Retry-After: 1` is waited out (the client's own backoff alone would come
    back within 0.5 s), then the batch succeeds."""
    seen: list[float] = []

    async def embeddings(request: web.Request) -> web.Response:
        seen.append(time.monotonic())
        body = await request.json()
        if len(seen) == 1:
            return web.json_response(
                {"error": "slow down"}, status=429, headers={"Retry-After": "1"}
            )
        data = [{"index": i, "embedding": [1.0, 0.0]} for i in range(len(body["input"]))]
        return web.json_response({"data": data})

    settings = await embeddings_api(aiohttp_server, embeddings, 2)
    embedder = OpenAIEmbedder(settings)
    try:
        vectors = await embedder.embed(["a", "b"])
    finally:
        await embedder.aclose()
    assert vectors.shape == (2, 2)
    assert np.allclose(vectors[:, 0], 1.0)
    assert len(seen) == 2
    assert seen[1] - seen[0] >= 0.95


async def test_the_embeddings_client_gives_up_with_the_status(aiohttp_server: Any) -> None:
    async def embeddings(_request: web.Request) -> web.Response:
        return web.json_response({"error": "down"}, status=503, headers={"Retry-After": "0"})

    settings = await embeddings_api(aiohttp_server, embeddings, 2)
    embedder = OpenAIEmbedder(settings, policy=RetryPolicy(attempts=3, base_s=0.01, max_s=0.01))
    try:
        with pytest.raises(EmbeddingError, match="HTTP 503"):
            await embedder.embed(["a"])
    finally:
        await embedder.aclose()
