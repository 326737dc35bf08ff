"""Calls that time out against a real, slow local model, with the service's default LLM
settings (a 30 s timeout, 8 workers a run, 5 retries): llama.cpp's `llama-server` on this
machine's CPU works on `--parallel` calls at once and queues the rest, so a client that
sends more starts their timeouts while they wait in that queue.

Each checkout's own LLM client (this one, and `--service-root DIR` for a before/after in one
run) generates questions for the bundled corpus as `--runs` runs at once would: each run's
workers take its chunks in turn. Prints calls, timeouts, failed chunks and the wall time.

Usage: scripts/bench_real_llm [--runs 2] [--chunks N] [--service-root DIR]
    [--base-url URL --model NAME]
(without --base-url it starts the local model itself: scripts/local_llm).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from deepmemory_service.demo import CORPUS
from deepmemory_service.testing import local_llm
from deepmemory_service.testing.client import free_port
from deepmemory_service.text.chunking import split

ROOT = Path(__file__).resolve().parents[1]

# run in a child with the checkout's package first on its path: its client, its defaults
CHILD = r"""
import asyncio, json, sys, time
import attrs
from deepmemory_service.llm.client import LLMQuestionGenerator
from deepmemory_service.models import Chunk
from deepmemory_service.platform.config import load_settings

job = json.load(sys.stdin)
settings = load_settings({})
llm = attrs.evolve(settings.llm, base_url=job["base_url"], model=job["model"])

async def main():
    gen = LLMQuestionGenerator(llm)
    failed = 0
    started = time.monotonic()

    async def run(texts):
        nonlocal failed
        queue = list(enumerate(texts))
        async def worker():
            nonlocal failed
            while queue:
                i, text = queue.pop(0)
                try:
                    await gen.generate(Chunk(i, text), 3)
                except Exception:
                    failed += 1
        await asyncio.gather(*(worker() for _ in range(settings.concurrency)))

    await asyncio.gather(*(run(job["texts"]) for _ in range(job["runs"])))
    await gen.aclose()
    print(json.dumps({
        "calls": gen.stats.calls, "timeouts": gen.stats.faults["timeout"],
        "faults": dict(gen.stats.faults), "failed_chunks": failed,
        "seconds": round(time.monotonic() - started, 1),
        "concurrency": settings.concurrency, "timeout_s": llm.timeout_s,
    }))

asyncio.run(main())
"""


def measure(
    root: Path, base_url: str, model: str, texts: list[str], runs: int
) -> dict[str, object]:
    job = json.dumps({"base_url": base_url, "model": model, "texts": texts, "runs": runs})
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(  # this interpreter, a fixed script
        [sys.executable, "-c", CHILD],
        input=job,
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=0, help="the corpus's first N (0: all)")
    parser.add_argument("--service-root", type=Path, help="another checkout: its client first")
    parser.add_argument("--base-url")
    parser.add_argument("--model", default=local_llm.DEFAULT_MODEL)
    args = parser.parse_args()
    text = resources.files("deepmemory_service").joinpath(f"data/{CORPUS}").read_text()
    texts = split(text)[: args.chunks or None]
    roots = [("after (this checkout)", ROOT)]
    if args.service_root:
        roots.insert(0, (f"before ({args.service_root})", args.service_root.resolve()))
    server = None
    base_url = args.base_url
    if base_url is None:
        cache = local_llm.cache_root()
        cache.mkdir(parents=True, exist_ok=True)
        server = local_llm.start(cache, model=args.model, port=free_port())
        base_url = server.base_url
    try:
        print(
            f"## Calls against a real local model ({args.model} on llama-server, "
            f"{os.cpu_count()} cores): {args.runs} runs of {len(texts)} chunks at once"
        )
        print("| client | calls | timed out | chunks failed | wall time |\n|---|---|---|---|---|")
        for name, root in roots:
            started = time.monotonic()
            r = measure(root, base_url, args.model, texts, args.runs)
            print(
                f"| {name} | {r['calls']} | {r['timeouts']} | {r['failed_chunks']} of "
                f"{len(texts) * args.runs} | {time.monotonic() - started:.0f} s |",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
