"""The generation benchmark's `--phase limits`: a provider's rate limit shared by four users
over two real `serve --role backend` processes on one PostgreSQL, with the shared budget or
with each worker backing off alone, and an incremental run after adding documents. Returns
the figures; generation_report.py prints them."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import Standin, fresh_database, standin  # scripts/, beside this file
from load_cluster import ADMIN, TOKEN, Cluster, Instance

from deepmemory_service.testing.checks import one_pair_set_per_chunk
from deepmemory_service.testing.client import Api


@dataclass(frozen=True)
class LimitSizes:
    rpm: float
    latency_ms: float
    concurrency: int
    sizes: tuple[int, ...]  # chunks per user; users alternate between the two instances
    added: int  # documents added before the incremental run
    questions: int = 3


LIMITS_FULL = LimitSizes(1200, 200, 8, (120, 240, 360, 480), 60)
LIMITS_QUICK = LimitSizes(1200, 200, 8, (30, 60, 90, 120), 15)
PRICES = {"input": 0.15, "output": 0.60}  # US dollars per million tokens (gpt-4o-mini's)


def instance_api(http: aiohttp.ClientSession, instance: Instance) -> Api:
    """Calls to one instance of the cluster, with its service and admin tokens, on `http`
    (a run polled every 200 ms)."""
    return Api(instance.url, TOKEN, headers={"X-Admin-Token": ADMIN}, http=http, every=0.2)


async def add_documents(api: Api, user: uuid.UUID, first: int, n: int) -> None:
    """`n` one-chunk documents, numbered from `first` (texts differ by number)."""
    docs = [
        {
            "text": f"Note {i} for {user.hex[:6]}: service{i} reads table{i % 31} every "
            f"{i % 50 + 1} minutes and retries {i % 7} times."
        }
        for i in range(first, first + n)
    ]
    code, body = await api.call(
        "POST", "/documents", json={"user_id": str(user), "documents": docs}
    )
    assert code == 201, body


async def limited(size: LimitSizes, budget: bool, incremental: bool) -> dict[str, Any]:
    """Four users over two instances against one key's limit; `budget`: the instances know
    the limit (DEEPMEMORY_LLM_RPM), else each worker backs off alone, as before."""
    env = {
        "DEEPMEMORY_CONCURRENCY": str(size.concurrency),
        # the service's defaults, not bench_load's fail-fast ones
        "DEEPMEMORY_LLM_MAX_RETRIES": "5",
        "DEEPMEMORY_LLM_BACKOFF_BASE_S": "0.5",
        "DEEPMEMORY_LLM_BACKOFF_MAX_S": "20",
        "DEEPMEMORY_LLM_TIMEOUT_S": "30",
        "DEEPMEMORY_LLM_PRICE_INPUT_PER_MTOK": str(PRICES["input"]),
        "DEEPMEMORY_LLM_PRICE_OUTPUT_PER_MTOK": str(PRICES["output"]),
        "DEEPMEMORY_LEASE_SWEEP_S": "3600",
    }
    if budget:
        env["DEEPMEMORY_LLM_RPM"] = str(size.rpm)
    workdir = Path(tempfile.mkdtemp(prefix="dm-bench-limits-"))
    async with (
        fresh_database("dm-bench-limits") as (db, _),
        standin() as llm,
        aiohttp.ClientSession() as http,
    ):
        await llm.configure(rpm=size.rpm, latency_ms=size.latency_ms)
        cluster = Cluster(db, llm, workdir)
        try:
            instances = [await cluster.start("a", **env), await cluster.start("b", **env)]
            apis = [instance_api(http, inst) for inst in instances]
            users = [uuid.uuid4() for _ in size.sizes]
            places = [apis[i % 2] for i in range(len(users))]
            for user, n, place in zip(users, size.sizes, places, strict=True):
                await add_documents(place, user, 0, n)
            await llm.configure(rpm=size.rpm)
            await llm.reset()  # the stats and the buckets from zero
            started = time.monotonic()
            replies = await asyncio.gather(
                *(
                    place.call("POST", "/deep-memory/generate", json={"user_id": str(u)})
                    for u, place in zip(users, places, strict=True)
                )
            )
            run_ids = [body["training_run_id"] for _, body in replies]
            timeline: list[tuple[float, list[dict[str, Any]]]] = []
            while True:
                runs = await asyncio.gather(
                    *(p.run(u, r) for p, u, r in zip(places, users, run_ids, strict=True))
                )
                timeline.append((time.monotonic() - started, runs))
                if all(r["status"] != "generating" for r in runs):
                    break
                await asyncio.sleep(0.25)
            calls = await llm.stats()
            result = _limits_figures(size, timeline, calls, budget)
            result["exact"] = [await one_pair_set_per_chunk(db, r, size.questions) for r in run_ids]
            if incremental:
                result["incremental"] = await _incremental(
                    llm, places[0], users[0], run_ids[0], size
                )
            return result
        finally:
            cluster.stop_all()
            shutil.rmtree(workdir, ignore_errors=True)


def _limits_figures(
    size: LimitSizes,
    timeline: list[tuple[float, list[dict[str, Any]]]],
    calls: dict[str, Any],
    budget: bool,
) -> dict[str, Any]:
    final = timeline[-1][1]
    ended = max(t for t, runs in timeline if any(r["status"] == "generating" for r in runs))
    chunks = sum(r["generated_chunks"] for r in final)
    per_s = size.rpm / 60
    # the window in which all four generate: each has begun, none has finished
    begun = next(
        (i for i, (_, runs) in enumerate(timeline) if all(r["generated_chunks"] for r in runs)), 0
    )
    first_done = next(
        (
            i
            for i, (_, runs) in enumerate(timeline)
            if any(r["status"] != "generating" for r in runs)
        ),
        len(timeline) - 1,
    )
    t0, at_begin = timeline[begun]
    t1, at_end = timeline[first_done]
    shares = [
        e["generated_chunks"] - b["generated_chunks"] for b, e in zip(at_begin, at_end, strict=True)
    ]
    fair = sum(shares) / len(shares) if shares else 0.0
    return {
        "budget": budget,
        "seconds": ended,
        "chunks": chunks,
        "throughput_ratio": (calls["successes"] / ended) / per_s if ended else 0.0,
        "calls": calls["calls"],
        "refused": calls["rate_limited"],
        "refused_share": calls["rate_limited"] / calls["calls"] if calls["calls"] else 0.0,
        "window_s": t1 - t0,
        "shares": shares,
        "share_vs_fair": [s / fair - 1 if fair else 0.0 for s in shares],
        "statuses": [r["status"] for r in final],
        "sizes": list(size.sizes),
        "runs": [
            {
                k: r[k]
                for k in (
                    "generated_chunks",
                    "llm_calls",
                    "prompt_tokens",
                    "completion_tokens",
                    "cost_usd",
                    "error_message",
                )
            }
            for r in final
        ],
    }


async def _incremental(
    llm: Standin, api: Api, user: uuid.UUID, run_id: str, size: LimitSizes
) -> dict[str, Any]:
    """Trains the user's run, adds documents, and counts the next run's LLM calls."""
    code, body = await api.call(
        "POST", "/deep-memory/train", json={"user_id": str(user), "training_run_id": run_id}
    )
    assert code == 202, body
    trained = await api.until(user, run_id, "completed", "training_failed", within=None)
    assert trained["status"] == "completed", trained
    await add_documents(api, user, size.sizes[0], size.added)
    _, ahead = await api.call("GET", "/deep-memory/estimate", params={"user_id": str(user)})
    await llm.configure(rpm=size.rpm)
    await llm.reset()
    code, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user)})
    assert code == 202, body
    run = await api.until(
        user, body["training_run_id"], "generated", "generating_failed", within=None
    )
    calls = await llm.stats()
    return {
        "added": size.added,
        "estimate": ahead,
        "status": run["status"],
        "reused": run["reused_chunks"],
        "new": run["new_chunks"],
        "llm_calls": calls["calls"],
        "successes": calls["successes"],
        "run_llm_calls": run["llm_calls"],
    }
