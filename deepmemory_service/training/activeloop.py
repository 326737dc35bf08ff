"""The Activeloop trainer: Deep Memory in Activeloop's cloud, through deeplake 3.9.

`VectorStore(path, runtime={"tensor_db": True}, token=...).deep_memory.train(queries,
relevance, embedding_function)` writes the queries dataset beside the corpus and starts the
job. `deep_memory.status()` only prints (and its printer fails on a completed job whose
recall it could not read), so polling sends the same `GET /api/deepmemory/v1/jobs/{id}/status`
through the store's own `DeepMemoryBackendClient.request` and reads the JSON.

Every deeplake call runs in a guarded daemon thread (`deeplake_compat.in_daemon_thread`)
under the overall `DEEPMEMORY_TRAIN_TIMEOUT_S`: an unreachable service or a failed job
becomes a readable `TrainingError`, never a hang. Search with the trained model is deeplake's
`VectorStore.search(deep_memory=True)`, which runs Activeloop's model, under the same guard.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import numpy as np
import structlog

from deepmemory_service.errors import BadGateway
from deepmemory_service.platform.config import TrainSettings
from deepmemory_service.storage import deeplake_compat
from deepmemory_service.storage.deeplake_compat import (
    ActiveloopUnreachable,
    in_daemon_thread,
    install_request_guard,
    use_endpoint,
)
from deepmemory_service.storage.nearest import Nearest, SearchResult
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.training.trainer import (
    NoModel,
    Reporter,
    TrainingError,
    TrainingOutcome,
    TrainingProgress,
    TrainingRequest,
)
from deepmemory_service.vectors import Matrix

log = structlog.get_logger(__name__)
T = TypeVar("T")

CLOUD_SEARCH_TIMEOUT_S = 30.0
DONE = "completed"
FAILED = frozenset({"failed", "cancelled", "canceled", "error"})
# a little of the budget is left so this trainer's message, not the caller's bare
# timeout, is what the user reads
DEADLINE_SHARE = 0.97
_RECALL = re.compile(r"([\d.]+)%\s*\(([+-]?[\d.]+)%\)")


def _submit(
    path: str,
    token: str,
    queries: list[str],
    relevance: list[list[tuple[str, int]]],
    embed: Callable[[Any], list[Any]],
) -> tuple[str, Any]:
    deeplake = deeplake_compat.load()
    store = deeplake.VectorStore(
        path=path, runtime={"tensor_db": True}, token=token, read_only=False, verbose=False
    )
    if store.deep_memory.client is None:
        raise TrainingError(
            "Deep Memory is not available to this Activeloop account or organisation "
            f"({path}); it needs a paid plan with Deep Memory enabled"
        )
    job_id = store.deep_memory.train(queries=queries, relevance=relevance, embedding_function=embed)
    return str(job_id), store.deep_memory.client


def _status(client: Any, job_id: str) -> dict[str, Any]:
    reply: dict[str, Any] = client.request("GET", f"/api/deepmemory/v1/jobs/{job_id}/status").json()
    return reply


def recall_from_progress(progress: Any) -> tuple[float, float] | None:
    """`"86.00% (+15.00%)"` → (0.86, 0.15): recall@10 with the model and its gain."""
    if not isinstance(progress, dict):
        return None
    match = _RECALL.search(str(progress.get("best_recall@10", "")))
    if match is None:
        return None
    return float(match.group(1)) / 100, float(match.group(2)) / 100


def _explain(exc: BaseException, what: str) -> str:
    name = type(exc).__name__
    if isinstance(exc, ActiveloopUnreachable):
        cause = exc.__cause__
        detail = f"{exc} ({type(cause).__name__})" if cause is not None else str(exc)
        return f"Activeloop training service unreachable: {detail} while {what}"
    if name in ("AuthenticationException", "InvalidTokenException", "TokenPermissionError"):
        return f"Activeloop rejected the token (DEEPMEMORY_ACTIVELOOP_TOKEN) while {what}"
    if name == "DeepMemoryAccessError":
        return "Deep Memory is not available to this Activeloop account or organisation"
    text = str(exc).strip() or "no details given"
    return f"Activeloop refused {what}: {name}: {text[:300]}"


class ActiveloopTrainer:
    name = "activeloop"

    def __init__(self, settings: TrainSettings, token: str, *, endpoint: str | None = None) -> None:
        self.settings = settings
        self._token = token
        install_request_guard()
        if endpoint is not None:
            use_endpoint(endpoint)

    def __repr__(self) -> str:
        return f"<ActiveloopTrainer timeout={self.settings.timeout_s:g}s>"

    async def train(self, request: TrainingRequest, report: Reporter) -> TrainingOutcome:
        store, embedder = request.store, request.embedder
        if not store.is_cloud:
            raise TrainingError(
                "the activeloop trainer needs a hub:// vector store (DEEPMEMORY_STORE_PATH)"
            )
        if not self._token:
            raise TrainingError("DEEPMEMORY_ACTIVELOOP_TOKEN is not set")
        if len(request.questions) != len(request.chunk_ids) or not request.questions:
            raise TrainingError(
                f"nothing to train on: {len(request.questions)} questions for "
                f"{len(request.chunk_ids)} chunk ids"
            )
        started = time.monotonic()
        deadline = started + self.settings.timeout_s * DEADLINE_SHARE
        queries = [str(q) for q in request.questions]
        relevance = [[(str(chunk_id), 1)] for chunk_id in request.chunk_ids]

        # embed here, on the loop, so deeplake's thread only looks vectors up
        unique = list(dict.fromkeys(queries))
        vectors = await embedder.embed(unique)
        table = {text: vectors[i] for i, text in enumerate(unique)}

        def embed(texts: Any) -> list[Any]:
            if isinstance(texts, str):
                texts = [texts]
            return [table[t] if t in table else np.zeros(store.dimension) for t in texts]

        await report(
            TrainingProgress(
                f"Submitting {len(queries)} pairs to Activeloop Deep Memory",
                0.02,
                {"pairs": len(queries)},
            )
        )
        job_id, client = await self._bounded(
            deadline,
            "submitting the training job",
            _submit,
            store.path,
            self._token,
            queries,
            relevance,
            embed,
        )
        log.info("deep memory job submitted", job_id=job_id, pairs=len(queries))
        await report(
            TrainingProgress(f"Deep Memory job {job_id} submitted", 0.05, {"job_id": job_id})
        )
        status = "submitted"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TrainingError(
                    f"Deep Memory job {job_id} did not finish within "
                    f"{self.settings.timeout_s:g}s (last status: {status})"
                )
            reply = await self._bounded(
                deadline, "checking the job's status", _status, client, job_id
            )
            status = str(reply.get("status") or "unknown").lower()
            progress = reply.get("progress") or {}
            if status == DONE:
                return self._outcome(job_id, progress, time.monotonic() - started)
            if status in FAILED:
                error = progress.get("error") if isinstance(progress, dict) else None
                raise TrainingError(
                    f"Deep Memory training job {job_id} {status}: {error or 'no details given'}"
                )
            elapsed = time.monotonic() - started
            eta = progress.get("eta") if isinstance(progress, dict) else None
            if isinstance(eta, int | float) and eta >= 0:
                fraction = 0.05 + 0.9 * elapsed / (elapsed + float(eta) + 1e-9)
                note = f" (about {float(eta):.0f}s left)"
            else:
                fraction, note = 0.5, ""
            await report(
                TrainingProgress(
                    f"Deep Memory job {job_id}: {status}{note}",
                    min(0.95, fraction),
                    {"job_id": job_id, "status": status},
                )
            )
            await asyncio.sleep(min(self.settings.poll_s, max(0.0, deadline - time.monotonic())))

    def _outcome(self, job_id: str, progress: Any, seconds: float) -> TrainingOutcome:
        metrics: dict[str, Any] = {
            "job_id": job_id,
            "trainer": self.name,
            "seconds": round(seconds, 3),
            "progress": progress,
        }
        figures = recall_from_progress(progress)
        if figures is None:
            # without figures there is no evidence the model helps; never enable blind
            return TrainingOutcome(
                metrics,
                False,
                f"Activeloop reported no recall figures for job {job_id}, so the model "
                "cannot be shown to beat no model",
            )
        with_model, gain = figures
        without = with_model - gain
        metrics["with_model"] = {"recall@10": round(with_model, 4)}
        metrics["without_model"] = {"recall@10": round(without, 4)}
        if gain <= 0:
            return TrainingOutcome(
                metrics,
                False,
                f"the trained model scored recall@10 {with_model:.2f} vs {without:.2f} without it",
            )
        return TrainingOutcome(metrics, True, None)

    async def _bounded(self, deadline: float, what: str, fn: Callable[..., T], *args: Any) -> T:
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                return await in_daemon_thread(fn, *args, deadline=deadline)
        except TimeoutError:
            raise TrainingError(
                f"Activeloop training service unreachable or too slow: {what} did not "
                f"finish within {self.settings.timeout_s:g}s"
            ) from None
        except TrainingError:
            raise
        except Exception as exc:
            message = _explain(exc, what)
            log.warning("activeloop call failed", what=what, error=message)
            raise TrainingError(message) from None

    async def query_model(self, store: ChunkStore) -> CloudQueryModel | None:
        # whether Activeloop holds a model for the store shows only when it is asked
        return CloudQueryModel(store) if store.is_cloud else None

    async def aclose(self) -> None:
        return None


def _cloud_search(store: ChunkStore, vector: Matrix, k: int) -> dict[str, Any]:
    deeplake = deeplake_compat.load()
    vs = deeplake.VectorStore(
        path=store.path,
        runtime={"tensor_db": True},
        token=store.token,
        read_only=True,
        verbose=False,
    )
    found: dict[str, Any] = vs.search(
        embedding=vector[0], k=k, deep_memory=True, return_tensors=["id", "text"]
    )
    return found


@attrs.frozen
class CloudQueryModel:
    """Activeloop's model for a hub:// store: the search runs in their cloud."""

    store: ChunkStore

    async def search(self, query: Matrix, k: int, nearest: Nearest) -> list[SearchResult]:
        install_request_guard()
        deadline = time.monotonic() + CLOUD_SEARCH_TIMEOUT_S
        try:
            async with asyncio.timeout(CLOUD_SEARCH_TIMEOUT_S):
                found = await in_daemon_thread(
                    _cloud_search, self.store, query, k, deadline=deadline
                )
        except TimeoutError:
            raise BadGateway(
                f"Activeloop Deep Memory search did not answer within {CLOUD_SEARCH_TIMEOUT_S:g}s"
            ) from None
        except Exception as exc:
            if type(exc).__name__ == "DeepMemoryAccessError":
                raise NoModel(str(exc)) from None
            raise BadGateway(
                f"Activeloop Deep Memory search failed: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None
        return [
            SearchResult(int(i), str(t), float(s))
            for i, t, s in zip(found["id"], found["text"], found["score"], strict=True)
        ]
