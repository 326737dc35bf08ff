"""`GET /metrics`: runs by status, generation and LLM counters, inboxes, SSE subscribers,
the search cache's memory budget and use;
behind a bearer token when `DEEPMEMORY_METRICS_TOKEN` is set (Prometheus sends one with
`authorization: {credentials: …}`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from deepmemory_service.api.keys import SERVICES, SETTINGS, SUPERVISORS
from deepmemory_service.api.middlewares import has_bearer
from deepmemory_service.errors import Unauthorized
from deepmemory_service.llm.budget_report import budget_samples
from deepmemory_service.llm.question_checks import Reason
from deepmemory_service.llm.usage import Prices
from deepmemory_service.models import RunStatus
from deepmemory_service.platform.metrics import render
from deepmemory_service.storage.search_cache import CacheStats


def metrics_handler(backend: web.Application) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        token = request.app[SETTINGS].metrics_token
        if token and not has_bearer(request, token):
            raise Unauthorized("Missing or invalid metrics token (Authorization: Bearer <token>)")
        svc = backend[SERVICES]
        sups = backend[SUPERVISORS].all()
        works = [s.work for s in sups if s.work is not None]
        m = svc.metrics
        counts = await m.run_counts.get()
        samples: list[tuple[str, str, dict[str, str], float]] = [
            ("deepmemory_runs", "gauge", {"status": s.value}, counts.get(s.value, 0))
            for s in RunStatus
        ]
        samples += [
            ("deepmemory_chunks_generated_total", "counter", {}, m.chunks_generated),
            ("deepmemory_pairs_written_total", "counter", {}, m.pairs_written),
            ("deepmemory_generation_failures_total", "counter", {}, m.generation_failures),
            ("deepmemory_training_runs_total", "counter", {}, m.training_runs),
            ("deepmemory_training_failures_total", "counter", {}, m.training_failures),
            *(
                (
                    "deepmemory_questions_rejected_total",
                    "counter",
                    {"reason": r.value},
                    m.questions_rejected[r.value],
                )
                for r in Reason
            ),
            ("deepmemory_question_reasks_total", "counter", {}, m.question_reasks),
            (
                "deepmemory_question_spares_unused_total",
                "counter",
                {},
                m.question_spares_unused,
            ),
            ("deepmemory_supervisors", "gauge", {}, len(sups)),
            ("deepmemory_inbox_depth", "gauge", {}, sum(s.inbox.qsize() for s in sups)),
            (
                "deepmemory_workers_busy",
                "gauge",
                {},
                sum(w.workers_busy for w in works),
            ),
            ("deepmemory_sse_subscribers", "gauge", {}, svc.broadcaster.subscriber_count),
            ("deepmemory_events_published_total", "counter", {}, svc.broadcaster.published),
        ]
        stats: Any = getattr(svc.generator, "stats", None)
        if stats is not None:
            for name, value in _numbers(stats):
                samples.append((f"deepmemory_llm_{name}_total", "counter", {}, value))
            cost = Prices.of(svc.settings.llm).cost(stats.prompt_tokens, stats.completion_tokens)
            if cost is not None:
                samples.append(("deepmemory_llm_cost_usd_total", "counter", {}, cost))
        samples += budget_samples(svc.budget)
        samples += search_cache_samples(svc.stores.search.stats())
        return web.Response(
            text=render(samples),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    return handler


def search_cache_samples(stats: CacheStats) -> list[tuple[str, str, dict[str, str], float]]:
    """The search cache's budget, what it holds, and how it served."""
    return [
        ("deepmemory_search_memory_budget_bytes", "gauge", {}, stats.budget_bytes),
        ("deepmemory_search_memory_bytes", "gauge", {}, stats.bytes),
        ("deepmemory_search_memory_users", "gauge", {}, stats.users),
        ("deepmemory_search_cache_hits_total", "counter", {}, stats.hits),
        ("deepmemory_search_cache_misses_total", "counter", {}, stats.misses),
        ("deepmemory_search_cache_evictions_total", "counter", {}, stats.evictions),
        ("deepmemory_search_cache_too_large_total", "counter", {}, stats.too_large),
    ]


def _numbers(stats: Any) -> list[tuple[str, float]]:
    values = stats if isinstance(stats, dict) else getattr(stats, "__dict__", {})
    if hasattr(stats, "__attrs_attrs__"):
        values = {a.name: getattr(stats, a.name) for a in stats.__attrs_attrs__}
    out: list[tuple[str, float]] = []
    for name, value in values.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out.append((name, float(value)))
        elif isinstance(value, dict):
            out += [
                (f"{name}_{k}", float(v)) for k, v in value.items() if isinstance(v, int | float)
            ]
    return out
