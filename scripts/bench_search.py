"""Search of large stores as a client sees it, before and after, in one run: one user of
200,000 one-chunk documents (hashing embedder, 1,024 dimensions) and ten users of 50,000,
uploaded once through the service into `--data` (a folder kept between runs: building them
takes long) and then searched by a fresh `serve --role backend` of each checkout in turn,
on the same PostgreSQL and stores.

For each checkout: the big user's first search (its store read), then `--searches` searches
(p50 / p99), the service's RSS after them; then the ten users searched in turn, rounds of
one search each, and the RSS after. For this checkout also the search cache's figures from
/metrics (bytes held against the budget, evictions). Recall@10 of this checkout's answers
against the other's, which scans float32 exactly: plain, and counting a chunk whose score
ties the exact 10th (word-hash vectors tie often) as found.

Usage: scripts/bench_search --data DIR [--before CHECKOUT] [--quick] [--budget-mb MB]
       [--big N] [--each N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import psutil
import yarl
from benchlib import (  # scripts/, beside this file
    Latency,
    backend_env,
    machine_load,
    mb,
    say,
    start_backend,
    stop_process,
)

from deepmemory_service.db import migrations
from deepmemory_service.db.embedded import EmbeddedPostgres
from deepmemory_service.testing.client import free_port

TOKEN = "bench-search-token"
UPLOAD = 1000  # documents per request (the service's most)
HERE = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    big: int
    users: int
    each: int
    searches: int
    rounds: int


FULL = Sizes(big=200_000, users=10, each=50_000, searches=200, rounds=3)
QUICK = Sizes(big=3000, users=3, each=1000, searches=30, rounds=2)


def vocabulary(rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Made-up words with Zipf's frequencies, as words in documents have."""
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pe", "da", "gu", "zo", "re"]
    words = sorted({"".join(rng.choice(syllables, int(rng.integers(2, 5)))) for _ in range(60000)})
    p = 1 / np.arange(1, len(words) + 1) ** 1.05
    return words, p / p.sum()


def documents(seed: int, n: int) -> list[dict[str, str]]:
    """`n` one-chunk documents (40 to 140 words), the same for the same seed."""
    rng = np.random.default_rng(seed)
    words, p = vocabulary(np.random.default_rng(0))
    picked = np.array(words)[rng.choice(len(words), size=(n, 140), p=p)]
    lengths = rng.integers(40, 140, n)
    return [{"title": f"d{seed}-{i}", "text": " ".join(picked[i, : lengths[i]])} for i in range(n)]


def queries(seed: int, n: int, count: int) -> list[str]:
    """Phrases of 2 to 6 words cut from the documents, as people search."""
    docs = documents(seed, n)
    rng = np.random.default_rng(seed + 1)
    out = []
    for i in rng.integers(0, n, count):
        words = docs[int(i)]["text"].split()
        start = int(rng.integers(0, len(words) - 6))
        out.append(" ".join(words[start : start + int(rng.integers(2, 7))]))
    return out


@dataclass
class Side:
    name: str
    latencies: list[float] = field(default_factory=list)
    first_s: float = 0.0
    rss_big: int = 0
    rss_users: int = 0
    rss_peak: int = 0
    metrics_big: dict[str, float] = field(default_factory=dict)
    turn_latencies: list[float] = field(default_factory=list)
    answers: list[list[tuple[int, float]]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def user(n: int) -> uuid.UUID:
    return uuid.UUID(int=n + 1)


async def serve(python: str, cwd: Path, db_url: str, data: Path, env: dict[str, str]) -> Any:
    port = free_port()
    environ = {
        **backend_env(data, data, db_url, TOKEN),
        "DEEPMEMORY_HTTP_MAX_BODY_BYTES": str(16 * 2**20),
        **env,
    }
    proc = await start_backend(python, cwd, port, environ, data.parent / f"serve-{port}.log")
    return proc, f"http://127.0.0.1:{port}"


async def build(
    http: aiohttp.ClientSession, url: str, plan: list[tuple[int, int]], done: Path
) -> None:
    """Every user's documents of `plan` (user, documents), uploaded through the service;
    two users' at once."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    started = time.monotonic()

    async def fill(u: int, n: int) -> None:
        docs = documents(u, n)
        for at in range(0, n, UPLOAD):
            body = {"user_id": str(user(u)), "documents": docs[at : at + UPLOAD]}
            async with http.post(f"{url}/v1/api/documents", json=body, headers=auth) as resp:
                if resp.status != 201:
                    raise RuntimeError(f"upload: {resp.status} {(await resp.text())[:300]}")
        say(f"  user {u}: {n} documents ({time.monotonic() - started:.0f} s)")

    pending = list(plan)
    while pending:
        batch, pending = pending[:2], pending[2:]
        await asyncio.gather(*(fill(u, n) for u, n in batch))
    await asyncio.to_thread(done.write_text, json.dumps(plan))


@asynccontextmanager
async def stores(root: Path, plan: list[tuple[int, int]]) -> AsyncIterator[tuple[str, Path]]:
    """(database url, data dir) of the users of `plan`, in `root`: an embedded PostgreSQL
    and the stores, built through the service the first time."""
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    pg = EmbeddedPostgres(root / "pg")
    base = await asyncio.to_thread(pg.start)
    try:
        admin = await asyncpg.connect(base)
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = 'bench'"):
            await admin.execute("CREATE DATABASE bench")
        await admin.close()
        parsed = yarl.URL(base)
        # with_path drops the query, which carries pgserver's socket directory
        db_url = str(parsed.with_path("/bench").with_query(parsed.query))
        await migrations.migrate_url(db_url)
        data = root / "data"
        done = root / "built.json"
        if not await asyncio.to_thread(done.exists):
            say(f"building the stores under {root} (once; kept for later runs)")
            proc, url = await serve(sys.executable, HERE, db_url, data, {})
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
                    await build(http, url, plan, done)
            finally:
                stop_process(proc)
        yield db_url, data
    finally:
        await asyncio.to_thread(pg.stop)


async def search(http: aiohttp.ClientSession, url: str, u: int, q: str) -> tuple[float, Any]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    params = {"user_id": str(user(u)), "q": q, "k": "10", "deep_memory": "false"}
    started = time.monotonic()
    async with http.get(f"{url}/v1/api/search", params=params, headers=auth) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"search: {resp.status} {body}")
    return time.monotonic() - started, body


def rss(proc: subprocess.Popen[bytes]) -> int:
    return int(psutil.Process(proc.pid).memory_info().rss)


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    found = {}
    async with http.get(f"{url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("deepmemory_search_"):
                name, value = line.rsplit(" ", 1)
                found[name] = float(value)
    return found


async def measure_big(
    side: Side, python: str, cwd: Path, where: tuple[str, Path], sizes: Sizes, env: dict[str, str]
) -> None:
    proc, url = await serve(python, cwd, *where, env)
    try:
        async with aiohttp.ClientSession() as http:
            asked = queries(0, sizes.big, sizes.searches)
            side.first_s, _ = await search(http, url, 0, asked[0])
            for q in asked:
                took, body = await search(http, url, 0, q)
                side.latencies.append(took)
                side.answers.append([(r["chunk_id"], r["score"]) for r in body["results"]])
            side.rss_big = rss(proc)
            side.metrics_big = await scrape(http, url)
    finally:
        stop_process(proc)


async def measure_users(
    side: Side, python: str, cwd: Path, where: tuple[str, Path], sizes: Sizes, env: dict[str, str]
) -> None:
    proc, url = await serve(python, cwd, *where, env)
    try:
        # each user's queries made once (each remakes the user's documents), not per search
        asked = {u: queries(u, sizes.each, sizes.rounds) for u in range(1, sizes.users + 1)}
        async with aiohttp.ClientSession() as http:
            for r in range(sizes.rounds):
                for u in range(1, sizes.users + 1):
                    took, _ = await search(http, url, u, asked[u][r])
                    side.turn_latencies.append(took)
                    side.rss_peak = max(side.rss_peak, rss(proc))
            side.rss_users = rss(proc)
            side.metrics = await scrape(http, url)
    finally:
        stop_process(proc)


Answers = list[list[tuple[int, float]]]


def recall(found: Answers, exact: Answers) -> tuple[float, float]:
    """(plain, counting ties of the exact 10th score as found) recall@10 of `found`."""
    plain = tied = total = 0
    for got, want in zip(found, exact, strict=True):
        ids = {c for c, _ in want}
        tenth = want[-1][1] if want else 0.0
        plain += sum(c in ids for c, _ in got)
        tied += sum(c in ids or s >= tenth - 1e-3 for c, s in got)
        total += len(want)
    return plain / max(total, 1), tied / max(total, 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="where the built stores are kept")
    parser.add_argument("--before", type=Path, help="a checkout to compare (its .venv is used)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget-mb", type=int, help="this checkout's budget (512; quick: 8)")
    parser.add_argument("--big", type=int, help="the big user's documents (200,000)")
    parser.add_argument("--each", type=int, help="documents of each of the ten users (50,000)")
    parser.add_argument("--build", choices=["big", "users"], help="only build these stores")
    parser.add_argument("--phase", choices=["big", "users"], help="only measure this phase")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    sizes = Sizes(
        args.big or sizes.big, sizes.users, args.each or sizes.each, sizes.searches, sizes.rounds
    )
    budget_mb = args.budget_mb or (8 if args.quick else 512)
    data = args.data.resolve()
    since = machine_load()
    env = {"DEEPMEMORY_SEARCH_MEMORY_BUDGET_MB": str(budget_mb)}
    if args.quick:  # the float16 scan too, on the quick mode's small stores
        env["DEEPMEMORY_SEARCH_COMPACT_ABOVE"] = "2000"
    big = (data / f"big-{sizes.big}", [(0, sizes.big)])
    many = (
        data / f"users-{sizes.users}x{sizes.each}",
        [(u, sizes.each) for u in range(1, sizes.users + 1)],
    )
    before = Side(f"before ({args.before})")
    after = Side("after (this checkout)")
    sides = [before, after] if args.before else [after]
    python = str(args.before / ".venv" / "bin" / "python") if args.before else ""
    for (root, plan), phase in ((big, measure_big), (many, measure_users)):
        only = args.build or args.phase
        if only and not root.name.startswith(only):
            continue
        async with stores(root, plan) as where:
            if args.build:
                continue
            if args.before:
                await phase(before, python, args.before, where, sizes, {})
            await phase(after, sys.executable, HERE, where, sizes, env)
    if args.build:
        return

    say(f"\none user of {sizes.big} one-chunk documents, {sizes.searches} searches (k=10):")
    for s in sides:
        say(
            f"  {s.name}: first search {s.first_s * 1000:.0f} ms; p50 / p90 / p99 / max "
            f"{Latency.of(s.latencies)}; service RSS {mb(s.rss_big)}"
        )
    say(f"{sizes.users} users of {sizes.each} searched in turn, {sizes.rounds} rounds:")
    for s in sides:
        say(
            f"  {s.name}: p50 / p90 / p99 / max {Latency.of(s.turn_latencies)}; "
            f"service RSS after {mb(s.rss_users)}, at most {mb(s.rss_peak)}"
        )
    for label, m in (("big user", after.metrics_big), ("users in turn", after.metrics)):
        if m:
            say(
                f"  search cache after the {label}: "
                f"{mb(m.get('deepmemory_search_memory_bytes', 0))} held of a "
                f"{mb(m.get('deepmemory_search_memory_budget_bytes', 0))} budget, "
                f"{m.get('deepmemory_search_memory_users', 0):.0f} users; hits "
                f"{m.get('deepmemory_search_cache_hits_total', 0):.0f}, misses "
                f"{m.get('deepmemory_search_cache_misses_total', 0):.0f}, evictions "
                f"{m.get('deepmemory_search_cache_evictions_total', 0):.0f}"
            )
    if args.before and after.latencies:
        plain, tied = recall(after.answers, sides[0].answers)
        say(
            f"recall@10 of after against before's exact float32 scan: {plain:.4f} "
            f"(ties of the 10th score counted as found: {tied:.4f})"
        )
        ratio = Latency.of(sides[0].latencies).p99 / Latency.of(after.latencies).p99
        say(
            f"p99 before / after: {ratio:.2f}x; RSS before / after: "
            f"{sides[0].rss_big / after.rss_big:.2f}x"
        )
    say(since())


if __name__ == "__main__":
    asyncio.run(main())
