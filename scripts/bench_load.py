"""Load benchmark against real `serve --role backend` processes on one PostgreSQL.

1. settings: `GET /deep-memory/settings` at an open-loop 200 req/s on one instance, over a
   few hundred users; latency counts from each request's scheduled time (coordinated
   omission is not hidden)
2. commands: the 202 latency of `generate` for N users, then of `proceed` once every run
   has failed (the stand-in LLM fails every call), both on a fixed timetable
3. fan-out: 1,000 SSE subscribers on one job running on instance A, half on A and half on
   B (events reach B through NOTIFY): per-event delivery latency (receive time minus the
   stored event's created_at: the payloads carry no timestamp), `done` count, RSS
4. slow subscribers: sockets that read nothing while a job of "another instance" (rows and
   events written with the service's own SQL) emits thousands of events; the instances'
   RSS must stay bounded and every stream must still be complete afterwards
5. uploads: one user keeps a dozen uploads in flight on one instance while other users'
   `GET /deep-memory/settings` are timed at an open-loop rate (and just before, without)

The stand-in LLM runs as a separate process on loopback. Database: DEEPMEMORY_DATABASE_URL
if set, else a fresh database on the machine's PostgreSQL, else an embedded one. The
pieces: `load_cluster.py` (the service processes), `load_probes.py` (open-loop scheduler,
SSE client, RSS and socket probes), `load_scenarios.py` (each scenario, returning its
figures), `load_report.py` (the printout); `benchlib.py` is shared with bench_generation.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import yarl
from benchlib import database, machine_load, say, standin  # scripts/, beside this file
from load_cluster import AUTH, Cluster, ingest
from load_probes import raise_nofile
from load_report import Results, report
from load_scenarios import (
    FULL,
    QUICK,
    Sizes,
    bench_commands,
    bench_fanout,
    bench_settings,
    bench_slow,
    bench_uploads,
)

from deepmemory_service.platform import logs

SCENARIOS = ("settings", "commands", "fanout", "slow", "uploads")


async def bench(sizes: Sizes, only: frozenset[str]) -> Results:
    async with database("dm-bench-load") as (db_url, where), standin() as llm:
        out = Results(where, yarl.URL(db_url).host or "local socket")
        workdir = Path(tempfile.mkdtemp(prefix="dm-bench-load-"))
        cluster = Cluster(db_url, llm, workdir)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        try:
            a, b = await asyncio.gather(cluster.start("a"), cluster.start("b"))
            say(f"instances a, b up ({where}); stand-in LLM at {llm.url}")
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), headers=AUTH, timeout=timeout
            ) as http:
                users = [uuid.uuid4() for _ in range(sizes.run_users)]
                t = time.monotonic()
                gate = asyncio.Semaphore(8)

                async def seed(i: int) -> None:
                    async with gate:
                        await ingest(http, (a, b)[i % 2], users[i], sizes.chunks_per_user)

                await asyncio.gather(*(seed(i) for i in range(len(users))))
                out.ingest_s = time.monotonic() - t
                say(f"ingested {len(users)} users in {out.ingest_s:.1f} s")

                everyone = users + [uuid.uuid4() for _ in range(sizes.extra_users)]
                if "settings" in only:
                    out.settings = await bench_settings(http, a, everyone, sizes)
                    say("1. settings done")
                if "commands" in only:
                    out.commands = await bench_commands(http, [a, b], users, db_url, llm, sizes)
                    say("2. generate / proceed done")
                if "fanout" in only:
                    out.fanout = await bench_fanout(http, a, b, db_url, llm, sizes)
                    say("3. fan-out done")
                if "slow" in only:
                    out.slow = await bench_slow(http, a, b, db_url, sizes)
                    say("4. slow subscribers done")
                if "uploads" in only:
                    out.uploads = await bench_uploads(http, a, everyone, sizes)
                    say("5. uploads done")
        finally:
            await asyncio.to_thread(cluster.stop_all)
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable); default: all",
    )
    args = parser.parse_args()
    logs.configure("warning", "console")
    nofile = raise_nofile()
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    load = machine_load()
    results = asyncio.run(bench(sizes, frozenset(args.only or SCENARIOS)))
    results.machine = load()
    report(results, sizes, nofile, time.monotonic() - started)


if __name__ == "__main__":
    main()
