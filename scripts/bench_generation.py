"""Benchmark of generation against the stand-in LLM (a separate process on loopback).

1. throughput at latency L and concurrency C on M chunks, and its ratio to the ideal C/L
2. the same with 30% faults (429 with Retry-After, 500, bad JSON, wrong count)
3. resume after a failure at chunk N: LLM calls made on resume against M - N
4. (in a fresh process) a 100,000-chunk run at zero latency: pairs/s and peak RSS
5. cancel while C calls of a slow LLM are in flight: how soon the reply comes, and the
   calls the run still began after it

`--phase limits`: a provider's rate limit shared by several users. Two real
`serve --role backend` processes on one PostgreSQL, four users generating at once (runs of
different sizes, two per instance) against the stand-in LLM enforcing R requests a minute
for the key: aggregate throughput as a ratio of R, the share of calls answered 429, each
user's share of the calls while all four generate against the fair quarter, whether every
run completed with exactly one pair set per chunk, tokens and cost per run; the same with
today's per-worker backoff (no budget configured) beside it; then an incremental run after
adding documents, and its LLM calls against the number of new chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from benchlib import Standin, fresh_database, standin  # scripts/, beside this file
from load_cluster import ADMIN, Cluster
from load_cluster import TOKEN as LOAD_TOKEN

from deepmemory_service.app import create_app
from deepmemory_service.platform import logs
from deepmemory_service.platform.config import Settings, load_settings
from deepmemory_service.testing.client import free_port

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


async def generated_at_least(api: str, user: uuid.UUID, run_id: str, n: int) -> None:
    while True:
        run = await call(api, "GET", f"/deep-memory/runs/{run_id}", params={"user_id": str(user)})
        if run["generated_chunks"] >= n:
            return
        await asyncio.sleep(0.02)


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
            reply = await call(
                api,
                "POST",
                "/deep-memory/proceed",
                json={"user_id": str(user), "training_run_id": failed["id"]},
            )
            done = await until(api, user, failed["id"], "generated", "generating_failed")
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
            accepted = await call(api, "POST", "/deep-memory/generate", json={"user_id": str(user)})
            run_id = accepted["training_run_id"]
            # the first wave answered: the next C calls are in flight
            await generated_at_least(api, user, run_id, c)
            started = time.perf_counter()
            reply = await call(
                api,
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


class LoadApi:
    """Calls to one instance of the cluster, with its service token."""

    def __init__(self, http: aiohttp.ClientSession, api: str) -> None:
        self.http, self.api = http, api

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {LOAD_TOKEN}", "X-Admin-Token": ADMIN}
        async with self.http.request(
            method, f"{self.api}{path}", headers=headers, **kwargs
        ) as resp:
            return resp.status, await resp.json()

    async def run(self, user: uuid.UUID, run_id: str) -> dict[str, Any]:
        code, run = await self.call(
            "GET", f"/deep-memory/runs/{run_id}", params={"user_id": str(user)}
        )
        assert code == 200, run
        return dict(run)

    async def until(self, user: uuid.UUID, run_id: str, *statuses: str) -> dict[str, Any]:
        while True:
            run = await self.run(user, run_id)
            if run["status"] in statuses:
                return run
            await asyncio.sleep(0.2)

    async def add(self, user: uuid.UUID, first: int, n: int) -> None:
        """`n` one-chunk documents, numbered from `first` (texts differ by number)."""
        docs = [
            {
                "text": f"Note {i} for {user.hex[:6]}: service{i} reads table{i % 31} every "
                f"{i % 50 + 1} minutes and retries {i % 7} times."
            }
            for i in range(first, first + n)
        ]
        code, body = await self.call(
            "POST", "/documents", json={"user_id": str(user), "documents": docs}
        )
        assert code == 201, body


async def exact_pair_sets(db_url: str, run_id: str, qpc: int) -> bool:
    conn = await asyncpg.connect(db_url)
    try:
        counts = await conn.fetch(
            "SELECT count(p.id) AS n FROM training_runs r "
            "JOIN chunks c ON c.user_id = r.user_id AND c.id <= r.chunk_id_max "
            "LEFT JOIN training_pairs p ON p.run_id = r.id AND p.chunk_id = c.id "
            "WHERE r.id = $1 GROUP BY c.id",
            uuid.UUID(run_id),
        )
    finally:
        await conn.close()
    return bool(counts) and {r["n"] for r in counts} == {qpc}


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
            apis = [LoadApi(http, inst.api) for inst in instances]
            users = [uuid.uuid4() for _ in size.sizes]
            places = [apis[i % 2] for i in range(len(users))]
            for user, n, place in zip(users, size.sizes, places, strict=True):
                await place.add(user, 0, n)
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
            result["exact"] = [await exact_pair_sets(db, r, size.questions) for r in run_ids]
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
    llm: Standin, api: LoadApi, user: uuid.UUID, run_id: str, size: LimitSizes
) -> dict[str, Any]:
    """Trains the user's run, adds documents, and counts the next run's LLM calls."""
    code, body = await api.call(
        "POST", "/deep-memory/train", json={"user_id": str(user), "training_run_id": run_id}
    )
    assert code == 202, body
    trained = await api.until(user, run_id, "completed", "training_failed")
    assert trained["status"] == "completed", trained
    await api.add(user, size.sizes[0], size.added)
    _, ahead = await api.call("GET", "/deep-memory/estimate", params={"user_id": str(user)})
    await llm.configure(rpm=size.rpm)
    await llm.reset()
    code, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user)})
    assert code == 202, body
    run = await api.until(user, body["training_run_id"], "generated", "generating_failed")
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


def print_limits(size: LimitSizes, shared: dict[str, Any], alone: dict[str, Any]) -> None:
    print(
        f"\n## Provider limit shared by four users over two instances (stand-in at "
        f"R = {size.rpm:g} requests/min, L = {size.latency_ms:g} ms, C = {size.concurrency} "
        f"per run, runs of {', '.join(map(str, size.sizes))} chunks × {size.questions} "
        f"questions; {os.cpu_count()} cores)\n"
    )
    print("| measure | shared budget | per-worker backoff (before) | goal |")
    print("|---|---|---|---|")

    def row(name: str, fmt: Any, goal: str) -> None:
        print(f"| {name} | {fmt(shared)} | {fmt(alone)} | {goal} |")

    row("aggregate throughput", _throughput, "≥ 0.9 × R")
    row(
        "calls answered 429",
        lambda r: f"{r['refused_share']:.1%} ({r['refused']:,} of {r['calls']:,})",
        "≤ 5%",
    )
    row(
        "each user's calls while all four generate, vs a fair quarter",
        lambda r: (
            ", ".join(f"{d:+.0%}" for d in r["share_vs_fair"]) + f" (over {r['window_s']:.1f} s)"
        ),
        "within ±20%",
    )
    row(
        "runs completed, exactly one pair set per chunk",
        lambda r: (
            f"{sum(s == 'generated' for s in r['statuses'])}/4 generated, {sum(r['exact'])}/4 exact"
        ),
        "4/4, 4/4",
    )
    for i, n in enumerate(size.sizes):
        row(
            f"run {i + 1} ({n} chunks): LLM calls, tokens, cost",
            lambda r, i=i: _run_cost(r["runs"][i]),
            "—",
        )
    inc = shared.get("incremental")
    if inc:
        est = inc["estimate"]
        print(
            f"\nIncremental run after training run 1 and adding {inc['added']} documents: the "
            f"estimate said {est['chunks_to_generate']} chunks to generate "
            f"({est['reusable_chunks']} reusable, "
            f"~{est['prompt_tokens'] + est['completion_tokens']:,} tokens, "
            f"${est['cost_usd']:.4f}); the run reused {inc['reused']} chunks, asked "
            f"the LLM about {inc['new']} and made {inc['llm_calls']} calls "
            f"({inc['successes']} answered) — goal: exactly {inc['added']}; {inc['status']}."
        )


def _throughput(r: dict[str, Any]) -> str:
    text = f"{r['throughput_ratio']:.2f} × R ({r['chunks']:,} chunks in {r['seconds']:.1f} s"
    failed = sum(s != "generated" for s in r["statuses"])
    return text + (f", when {failed} of 4 runs had failed)" if failed else ")")


def _run_cost(run: dict[str, Any]) -> str:
    cost = f"${run['cost_usd']:.4f}" if run["cost_usd"] is not None else "—"
    text = (
        f"{run['llm_calls']:,} calls, {run['prompt_tokens']:,} + {run['completion_tokens']:,} "
        f"tokens, {cost}"
    )
    if run["error_message"]:
        text += f"; failed: {run['error_message'][:80]}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--phase", choices=["all", "large", "limits"], default="all")
    args = parser.parse_args()
    logs.configure("warning", "console")
    if args.phase == "limits":
        size = LIMITS_QUICK if args.quick else LIMITS_FULL
        shared = asyncio.run(limited(size, budget=True, incremental=True))
        alone = asyncio.run(limited(size, budget=False, incremental=False))
        print_limits(size, shared, alone)
        return
    m, big = (400, 10_000) if args.quick else (2_000, 100_000)
    if args.phase == "large":
        print(json.dumps(asyncio.run(large(big, 16))))
        return

    latency, c = 200.0, 16
    clean = asyncio.run(throughput(m, latency, c, 0.0))
    faulty = asyncio.run(throughput(m, latency, c, 0.3))
    resumed = asyncio.run(resume(m, fail_at=m // 3, c=c))
    cancelled = asyncio.run(
        cancel_latency(
            m, c, latency_ms=1000.0 if args.quick else 2000.0, tries=2 if args.quick else 5
        )
    )
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
        f"| cancel with C calls of {cancelled['latency_ms'] / 1000:g} s in flight "
        f"({cancelled['tries']} runs) | reply p50 {cancelled['p50_ms']:.0f} ms, max "
        f"{cancelled['max_ms']:.0f} ms; {cancelled['late_calls']} calls began after a reply "
        "| < 1 s, none |"
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
