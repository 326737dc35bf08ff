"""Benchmark of generation against the stand-in LLM (a separate process on loopback).

1. throughput at latency L and concurrency C on M chunks, and its ratio to the ideal C/L
2. the same with 30% faults (429 with Retry-After, 500, bad JSON, wrong count)
3. resume after a failure at chunk N: LLM calls made on resume against M - N
4. (in a fresh process) a 100,000-chunk run at zero latency: pairs/s and peak RSS
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from benchlib import free_port, fresh_database  # scripts/, beside this file

from deepmemory_service import logs
from deepmemory_service.app import create_app
from deepmemory_service.config import Settings, load_settings

TOKEN = "bench-token"


@asynccontextmanager
async def standin(**config: Any) -> AsyncIterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepmemory_service.testing.standin_llm", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with http.get(f"{url}/_standin/stats"):
                        break
                except aiohttp.ClientError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            await configure(url, **config)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def configure(url: str, **config: Any) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/_standin/config", json=config) as resp:
            assert resp.status == 200, await resp.text()
        if config.pop("reset", True):
            async with http.post(f"{url}/_standin/reset"):
                pass


async def stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/_standin/stats") as resp:
        data: dict[str, Any] = await resp.json()
        return data


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
async def service(settings: Settings) -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/v1/api"
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
        },
    )


async def call(api: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.request(method, f"{api}{path}", **kwargs) as resp,
    ):
        data: dict[str, Any] = await resp.json()
        return data


async def until(api: str, user: uuid.UUID, run_id: str, *statuses: str) -> dict[str, Any]:
    while True:
        run = await call(api, "GET", f"/deep-memory/runs/{run_id}", params={"user_id": str(user)})
        if run["status"] in statuses:
            return run
        await asyncio.sleep(0.05)


async def timed_run(api: str, user: uuid.UUID) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    accepted = await call(api, "POST", "/deep-memory/generate", json={"user_id": str(user)})
    run = await until(api, user, accepted["training_run_id"], "generated", "generating_failed")
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
        async with service(service_settings(db, llm, c)) as api:
            run, seconds = await timed_run(api, user)
        calls = await stats(llm)
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
        settings = service_settings(db, llm, c)
        async with service(settings) as api:
            failed, _ = await timed_run(api, user)
            covered = failed["generated_chunks"]
            await configure(llm, fail_after=None)
            before = await stats(llm)
            reply = await call(
                api,
                "POST",
                "/deep-memory/proceed",
                json={"user_id": str(user), "training_run_id": failed["id"]},
            )
            done = await until(api, user, failed["id"], "generated", "generating_failed")
        after = await stats(llm)
    return {
        "m": m,
        "covered": covered,
        "message": reply["message"],
        "resume_calls": after["calls"] - before["calls"],
        "expected": m - covered,
        "final": done["status"],
        "pairs": done["pair_count"],
    }


async def large(m: int, c: int) -> dict[str, Any]:
    async with fresh_database("dm-bench") as (db, _), standin(latency_ms=0) as llm:
        user = uuid.uuid4()
        await seed_chunks(db, user, m)
        async with service(service_settings(db, llm, c)) as api:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--phase", choices=["all", "large"], default="all")
    args = parser.parse_args()
    logs.configure("warning", "console")
    m, big = (400, 10_000) if args.quick else (2_000, 100_000)
    if args.phase == "large":
        print(json.dumps(asyncio.run(large(big, 16))))
        return

    latency, c = 200.0, 16
    clean = asyncio.run(throughput(m, latency, c, 0.0))
    faulty = asyncio.run(throughput(m, latency, c, 0.3))
    resumed = asyncio.run(resume(m, fail_at=m // 3, c=c))
    child = subprocess.run(
        [sys.executable, __file__, "--phase", "large", *(["--quick"] if args.quick else [])],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    big_run = json.loads(child.stdout.strip().splitlines()[-1])

    print(
        f"\n## Generation benchmark (stand-in LLM at L={latency:g} ms, C={c}, "
        f"M={m} chunks; {os.cpu_count()} cores)\n"
    )
    print("| measure | figure | target |")
    print("|---|---|---|")
    print(
        f"| throughput, no faults | {clean['chunks_per_s']:.1f} chunks/s = "
        f"{clean['ratio']:.2f} × C/L ({clean['ideal']:.0f}/s) | ≥ 0.9 × C/L |"
    )
    print(
        f"| throughput, 30% faults ({faulty['faults']} faults in {faulty['llm_calls']} "
        f"calls) | {faulty['chunks_per_s']:.1f} chunks/s = {faulty['ratio']:.2f} × C/L, "
        f"run {faulty['status']} | completes |"
    )
    print(
        f"| resume after failure at chunk {resumed['covered']} | {resumed['resume_calls']} "
        f'LLM calls for M−N = {resumed["expected"]}; "{resumed["message"]}"; '
        f"{resumed['final']}, {resumed['pairs']} pairs | exactly M−N |"
    )
    print(
        f"| {big_run['chunks']:,}-chunk run at zero latency | {big_run['pairs_per_s']:,.0f} "
        f"pairs/s ({big_run['pairs']:,} pairs in {big_run['seconds']:.1f} s) | ≥ 5,000 |"
    )
    print(
        f"| peak RSS of the service process, {big_run['chunks']:,} chunks | "
        f"{big_run['peak_rss_mb']:.0f} MB (before the run {big_run['rss_before_mb']:.0f} MB) "
        "| < 300 MB |"
    )


if __name__ == "__main__":
    main()
