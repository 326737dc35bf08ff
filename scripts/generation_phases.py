"""The generation benchmark's phases on one service in process (the stand-in LLM a separate
process on loopback): throughput with and without faults, resume after a failure, cancel
with calls in flight, and a large run's speed and memory. Each returns its figures."""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiohttp import web
from benchlib import fresh_database, standin  # scripts/, beside this file

from deepmemory_service.app import create_app
from deepmemory_service.platform.config import Settings, load_settings
from deepmemory_service.testing.client import Api, free_port, poll

TOKEN = "bench-token"


async def seed_chunks(db_url: str, user: uuid.UUID, n: int) -> None:
    """Chunks straight into the catalog: generation reads only the catalog."""
    conn = await asyncpg.connect(db_url)
    try:
        doc = uuid.uuid4()
        await conn.execute(
            "INSERT INTO documents (id, user_id, chunk_count) VALUES ($1,$2,$3)", doc, user, n
        )
        await conn.copy_records_to_table(
            "chunks",
            columns=["user_id", "document_id", "position", "text"],
            records=(
                (
                    user,
                    doc,
                    i,
                    f"Section {i}: component{i} talks to module{i % 97} "
                    f"through queue{i % 13}; its timeout is {i % 60} seconds.",
                )
                for i in range(n)
            ),
        )
        await conn.execute(
            "INSERT INTO corpora (user_id, total_chunks, embedder, dimension) "
            "VALUES ($1, $2, 'hashing', 1024)",
            user,
            n,
        )
    finally:
        await conn.close()


@asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[Api]:
    """The service in process on a free port, and its API (a run polled every 50 ms)."""
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Api(f"http://127.0.0.1:{port}", TOKEN, every=0.05)
    finally:
        await runner.cleanup()


def service_settings(db_url: str, llm_url: str, concurrency: int) -> Settings:
    return load_settings(
        {},
        overrides={
            "database.url": db_url,
            "data_dir": tempfile.mkdtemp(prefix="dm-bench-"),
            "service_token": TOKEN,
            "generator": "llm",
            "concurrency": concurrency,
            "http.role": "backend",
            "log_level": "warning",
            "llm.base_url": f"{llm_url}/v1",
            "llm.timeout_s": 5.0,
            "llm.max_retries": 8,
            "llm.backoff_base_s": 0.05,
            "llm.backoff_max_s": 2.0,
            # the chunks are seeded into the catalog without vectors (a store would be
            # rebuilt from them first); the question checks run, but not the round trip
            "questions.round_trip_k": 0,
        },
    )


async def generated_at_least(api: Api, user: uuid.UUID, run_id: str, n: int) -> None:
    await poll(lambda: api.run(user, run_id), lambda run: run["generated_chunks"] >= n, within=None)


async def timed_run(api: Api, user: uuid.UUID) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    _, accepted = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user)})
    run = await api.until(
        user, accepted["training_run_id"], "generated", "generating_failed", within=None
    )
    return run, time.perf_counter() - started


async def throughput(m: int, latency_ms: float, c: int, fault_rate: float) -> dict[str, Any]:
    faults = ["429", "500", "bad_json", "wrong_count"]
    async with (
        fresh_database("dm-bench") as (db, _),
        standin(
            latency_ms=latency_ms, fault_rate=fault_rate, faults=faults, retry_after_s=1
        ) as llm,
    ):
        user = uuid.uuid4()
        await seed_chunks(db, user, m)
        async with service(service_settings(db, llm.url, c)) as api:
            run, seconds = await timed_run(api, user)
        calls = await llm.stats()
    rate = run["generated_chunks"] / seconds
    ideal = c / (latency_ms / 1000)
    return {
        "chunks": run["generated_chunks"],
        "status": run["status"],
        "seconds": seconds,
        "chunks_per_s": rate,
        "ideal": ideal,
        "ratio": rate / ideal,
        "llm_calls": calls["calls"],
        "faults": sum(calls["faults"].values()),
    }


async def resume(m: int, fail_at: int, c: int) -> dict[str, Any]:
    async with (
        fresh_database("dm-bench") as (db, _),
        standin(latency_ms=5, fail_after=fail_at) as llm,
    ):
        user = uuid.uuid4()
        await seed_chunks(db, user, m)
        settings = service_settings(db, llm.url, c)
        async with service(settings) as api:
            failed, _ = await timed_run(api, user)
            covered = failed["generated_chunks"]
            await llm.configure(fail_after=None)
            before = await llm.stats()
            _, reply = await api.call(
                "POST",
                "/deep-memory/proceed",
                json={"user_id": str(user), "training_run_id": failed["id"]},
            )
            done = await api.until(
                user, failed["id"], "generated", "generating_failed", within=None
            )
        after = await llm.stats()
    return {
        "m": m,
        "covered": covered,
        "message": reply["message"],
        "resume_calls": after["calls"] - before["calls"],
        "expected": m - covered,
        "final": done["status"],
        "pairs": done["pair_count"],
    }


async def cancel_latency(m: int, c: int, latency_ms: float, tries: int) -> dict[str, Any]:
    """Each try: a run whose C workers all wait on the LLM, cancelled; the reply's time,
    and the calls that reached the LLM after it (over twice the latency)."""
    replies: list[float] = []
    late = 0
    async with (
        fresh_database("dm-bench") as (db, _),
        standin(latency_ms=latency_ms) as llm,
        service(service_settings(db, llm.url, c)) as api,
    ):
        for _ in range(tries):
            user = uuid.uuid4()
            await seed_chunks(db, user, m)
            _, accepted = await api.call(
                "POST", "/deep-memory/generate", json={"user_id": str(user)}
            )
            run_id = accepted["training_run_id"]
            # the first wave answered: the next C calls are in flight
            await generated_at_least(api, user, run_id, c)
            started = time.perf_counter()
            _, reply = await api.call(
                "POST",
                "/deep-memory/cancel",
                json={"user_id": str(user), "training_run_id": run_id},
            )
            replies.append(time.perf_counter() - started)
            assert reply["status"] == "generating_failed", reply
            at_reply = (await llm.stats())["calls"]
            await asyncio.sleep(2 * latency_ms / 1000)
            late += (await llm.stats())["calls"] - at_reply
    replies.sort()
    return {
        "tries": tries,
        "latency_ms": latency_ms,
        "p50_ms": replies[len(replies) // 2] * 1000,
        "max_ms": replies[-1] * 1000,
        "late_calls": late,
    }


async def large(m: int, c: int) -> dict[str, Any]:
    async with fresh_database("dm-bench") as (db, _), standin(latency_ms=0) as llm:
        user = uuid.uuid4()
        await seed_chunks(db, user, m)
        async with service(service_settings(db, llm.url, c)) as api:
            base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            run, seconds = await timed_run(api, user)
    return {
        "chunks": run["generated_chunks"],
        "pairs": run["pair_count"],
        "seconds": seconds,
        "pairs_per_s": run["pair_count"] / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": base_rss,
    }
