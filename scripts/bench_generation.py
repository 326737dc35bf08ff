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

The pieces: `generation_phases.py` (1-5, each on a service in process, returning its
figures), `generation_limits.py` (`--phase limits`, on real processes started by
`load_cluster.py`), `generation_report.py` (the printout); `benchlib.py` is shared with
bench_load, and the client of a running instance with the tests
(`deepmemory_service.testing.client`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys

from generation_limits import LIMITS_FULL, LIMITS_QUICK, limited  # scripts/, beside this file
from generation_phases import cancel_latency, large, resume, throughput
from generation_report import print_limits, print_phases

from deepmemory_service.platform import logs


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

    print_phases(latency, c, m, clean, faulty, resumed, cancelled, big_run)


if __name__ == "__main__":
    main()
