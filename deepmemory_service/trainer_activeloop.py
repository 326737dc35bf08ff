"""The Activeloop trainer: Deep Memory in Activeloop's cloud, through deeplake 3.9.

`VectorStore(path, runtime={"tensor_db": True}, token=...).deep_memory.train(queries,
relevance, embedding_function)` writes the queries dataset beside the corpus and starts the
job. `deep_memory.status()` only prints (and its printer fails on a completed job whose
recall it could not read), so polling sends the same `GET /api/deepmemory/v1/jobs/{id}/status`
through the store's own `DeepMemoryBackendClient.request` and reads the JSON.

deeplake is blocking, and its client retries a connection error forever without pausing.
So every call runs in a daemon thread under the overall
`DEEPMEMORY_TRAIN_TIMEOUT_S`, and `install_request_guard` wraps the `requests` module the
client uses: connection errors get a short backoff and, after a few, an exception the retry
loop does not catch; past the caller's deadline every further request fails at once. An
unreachable service or a failed job becomes a readable `TrainingError`, and an abandoned
thread stops at its next request instead of spinning or holding the process open.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import structlog

from deepmemory_service import deeplake_compat
from deepmemory_service.config import TrainSettings
from deepmemory_service.retry import RetryPolicy
from deepmemory_service.trainers import (
    Reporter,
    TrainingError,
    TrainingOutcome,
    TrainingProgress,
    TrainingRequest,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

DONE = "completed"
FAILED = frozenset({"failed", "cancelled", "canceled", "error"})
# deeplake's client retries a connection error forever and at once: the guard pauses
# 0.4 s, then 0.8 s, and breaks the loop at the third failure in a row
CONNECT_RETRY = RetryPolicy(attempts=3, base_s=0.2, max_s=1.6, jitter=False)
# a little of the budget is left so this trainer's message, not the caller's bare
# timeout, is what the user reads
DEADLINE_SHARE = 0.97
_RECALL = re.compile(r"([\d.]+)%\s*\(([+-]?[\d.]+)%\)")


class ActiveloopUnreachable(Exception):
    """Raised inside deeplake's client when the service cannot be reached in time."""


_guard = threading.local()
_guard_lock = threading.Lock()


class _GuardedRequests:
    """Stands in for the `requests` module inside `deeplake.client.client`."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        deadline: float | None = getattr(_guard, "deadline", None)
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ActiveloopUnreachable(f"no time left for {method} {url}")
            timeout = kwargs.get("timeout")
            kwargs["timeout"] = remaining if timeout is None else min(float(timeout), remaining)
        try:
            response = self._real.request(method, url, **kwargs)
        except self._real.exceptions.ConnectionError as exc:
            failures = getattr(_guard, "failures", 0) + 1
            _guard.failures = failures
            if failures >= CONNECT_RETRY.attempts:
                _guard.failures = 0
                raise ActiveloopUnreachable(f"cannot connect to {_origin(url)}") from exc
            pause = CONNECT_RETRY.delay(failures)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            raise  # deeplake's loop catches this one and tries again
        _guard.failures = 0
        return response


def _origin(url: str) -> str:
    match = re.match(r"[a-z]+://[^/]+", url)
    return match.group(0) if match else url


def _client_module() -> Any:
    deeplake_compat.load()
    import deeplake.client.client as client_module

    return client_module


def install_request_guard() -> None:
    """Bound deeplake's REST client (idempotent, process-wide)."""
    client_module = _client_module()
    with _guard_lock:
        if not isinstance(client_module.requests, _GuardedRequests):
            client_module.requests = _GuardedRequests(client_module.requests)


def use_endpoint(url: str | None) -> None:
    """Send deeplake's REST calls to `url` (a stand-in, a proxy); None: Activeloop's own.

    deeplake has no setting for this: its client reads the module constant
    `HUB_REST_ENDPOINT` (copied from `deeplake.client.config`) on every request.
    """
    client_module = _client_module()
    import deeplake.client.config as client_config

    client_module.HUB_REST_ENDPOINT = url.rstrip("/") if url else client_config.HUB_REST_ENDPOINT


async def in_daemon_thread(fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
    """`fn(*args)` in a daemon thread whose deeplake requests stop at `deadline`.

    Cancelling the await abandons the thread; being a daemon it never holds the process
    open, and the request guard makes it give up at its next request.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def run() -> None:
        _guard.deadline = deadline
        _guard.failures = 0
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, future.set_exception, exc)
        else:
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, future.set_result, result)

    name = f"deeplake:{getattr(fn, '__name__', 'call')}"
    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


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
                f"the activeloop trainer needs a hub:// vector store, not {store.path}"
            )
        if not self._token:
            raise TrainingError("DEEPMEMORY_ACTIVELOOP_TOKEN is not set")
        if len(request.questions) != len(request.chunk_ids) or not request.questions:
            raise TrainingError(
                f"nothing to train on: {len(request.questions)} questions for "
                f"{len(request.chunk_ids)} chunk ids"
            )
        if embedder.name != store.embedder or embedder.dimension != store.dimension:
            raise TrainingError(
                f"the vector store holds {store.embedder} vectors of dimension "
                f"{store.dimension}, but the configured embedder is {embedder.name} "
                f"({embedder.dimension})"
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

    async def aclose(self) -> None:
        return None
