"""Ingest against the storage's own speed: documents of one chunk uploaded through the
service's `POST /documents`, against the same embedder and deeplake writing the same rows
alone in one process. Prints figures; not a test.

1. embedder: the configured (hashing) embedder alone on the documents' texts, in batches of
   a request's size: chunks/s (and scikit-learn's `HashingVectorizer` on the same texts
   when it is importable: a C implementation of feature hashing, for scale; not a
   dependency of the service)
2. alone: in one process, each batch embedded (`HashingEmbedder.embed_sync`) and appended
   to one deeplake dataset of the store's layout (`dataset.create_tensors` / `extend`),
   flushed: chunks/s, and the time per batch at the start and at the end
3. service: one `serve --role backend` process on a fresh database, the documents uploaded
   `--per-request` at a time by one client, `--in-flight` requests at once (1: one after
   another): chunks/s, the ratio to (2), and each upload's time at the start and the end
   (whether it stays flat as the user's store grows)

With `--before DIR`, steps 2 and 3 run with the code of the checkout DIR (its
`deepmemory_service` first on PYTHONPATH, this venv's packages), then with this one's in
the reverse order (service, alone): each ratio's two runs are next to each other, as the
machine's load drifts.

Usage: scripts/bench_ingest [--quick] [--docs N] [--per-request N] [--in-flight N]
       [--before DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import (  # scripts/, beside this file
    backend_env,
    free_port,
    fresh_database,
    machine_load,
    say,
    start_backend,
    stop_process,
)

HERE = Path(__file__).resolve().parent
TOKEN = "bench-ingest-token"
# characters of a document: one chunk (the service cuts at 1,200)
DOC_CHARS = 900


def documents(n: int, seed: int = 7) -> list[tuple[str, str]]:
    """`n` (title, text) of one chunk each: runs of words of CPython's reference text (real
    prose and code, so words repeat as in people's documents), one paragraph each."""
    import pydoc_data.topics

    words = " ".join(pydoc_data.topics.topics.values()).split()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        start = rng.randrange(len(words) - 400)
        text, end = "", start
        while len(text) < DOC_CHARS:
            text = f"{text} {words[end].lstrip('#')}" if text else words[end].lstrip("#")
            end += 1
        out.append((f"document {i}", text))
    return out


# --------------------------------------------------------------------------- in one process
# (run by a subprocess of this script with a checkout's code on its PYTHONPATH)


def embed_alone(n: int, per: int) -> dict[str, Any]:
    from deepmemory_service.storage.embedders import HashingEmbedder

    texts = [t for _, t in documents(n)]
    embedder = HashingEmbedder()
    started = time.perf_counter()
    for i in range(0, n, per):
        embedder.embed_sync(texts[i : i + per])
    result: dict[str, Any] = {"chunks_per_s": n / (time.perf_counter() - started)}
    try:
        from sklearn.feature_extraction.text import HashingVectorizer
    except ImportError:
        return result
    # words and word pairs, English stopwords left out, rows L2-normalised: the same work
    vectorizer = HashingVectorizer(n_features=1024, ngram_range=(1, 2), stop_words="english")
    started = time.perf_counter()
    for i in range(0, n, per):
        vectorizer.transform(texts[i : i + per])
    result["sklearn_chunks_per_s"] = n / (time.perf_counter() - started)
    return result


def write_alone(n: int, per: int, folder: str) -> dict[str, Any]:
    """The same embedder and deeplake writing the same rows, in one process."""
    from deepmemory_service.storage import deeplake_compat
    from deepmemory_service.storage.dataset import Rows, create_tensors, extend
    from deepmemory_service.storage.embedders import HashingEmbedder

    docs = documents(n)
    embedder = HashingEmbedder()
    ds = deeplake_compat.load().empty(folder, verbose=False, lock_enabled=False)
    create_tensors(ds, embedder.name, embedder.dimension)
    ds.flush()
    batches = []
    started = time.perf_counter()
    for i in range(0, n, per):
        t = time.perf_counter()
        part = docs[i : i + per]
        texts = [text for _, text in part]
        document_ids = [str(uuid.uuid4()) for _ in part]
        extend(
            ds,
            Rows(
                list(range(i + 1, i + len(part) + 1)),
                texts,
                embedder.embed_sync(texts),
                [
                    {"document_id": d, "title": title, "position": 0}
                    for d, (title, _) in zip(document_ids, part, strict=True)
                ],
            ),
        )
        ds.flush()
        batches.append(time.perf_counter() - t)
    return {"chunks_per_s": n / (time.perf_counter() - started), "batches": batches}


def in_process(step: str, n: int, per: int, root: Path, workdir: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{HERE}", "HOME": str(workdir)}
    proc = subprocess.run(
        [
            *(sys.executable, str(HERE / "bench_ingest.py"), "--step", step),
            *("--docs", str(n), "--per-request", str(per), "--workdir", str(workdir)),
        ],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{step} with {root} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- the service


@dataclass
class Service:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/api"


async def start_service(root: Path, db_url: str, workdir: Path) -> Service:
    port = free_port()
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    env = {
        **backend_env(workdir, workdir, db_url, TOKEN),
        "PYTHONPATH": str(root),
        "DEEPMEMORY_HTTP_ROLE": "backend",
        "DEEPMEMORY_INSTANCE_ID": f"bench-ingest-{port}",
        "DEEPMEMORY_HTTP_MAX_BODY_BYTES": str(16 * 2**20),
    }
    proc = await start_backend(sys.executable, root, port, env, workdir / "service.log")
    return Service(port, proc)


async def upload_all(
    service: Service, docs: list[tuple[str, str]], per: int, in_flight: int
) -> dict[str, Any]:
    user = str(uuid.uuid4())
    bodies = [
        json.dumps(
            {"user_id": user, "documents": [{"title": t, "text": x} for t, x in docs[i : i + per]]}
        ).encode()
        for i in range(0, len(docs), per)
    ]
    times: list[float] = [0.0] * len(bodies)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)

    async def client(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            while True:
                t = time.perf_counter()
                async with http.post(
                    f"{service.api}/documents", data=bodies[i], headers=headers
                ) as resp:
                    body = await resp.read()
                if resp.status == 429:  # the user's bound on uploads at once
                    await asyncio.sleep(0.05)
                    continue
                if resp.status != 201:
                    raise RuntimeError(f"upload {i}: {resp.status} {body[:500]!r}")
                times[i] = time.perf_counter() - t
                break

    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(in_flight)))
        took = time.perf_counter() - started
    return {"chunks_per_s": len(docs) / took, "batches": times}


async def service_run(
    root: Path, db_url: str, workdir: Path, docs: list[tuple[str, str]], per: int, in_flight: int
) -> dict[str, Any]:
    service = await start_service(root, db_url, workdir)
    try:
        return await upload_all(service, docs, per, in_flight)
    finally:
        await asyncio.to_thread(stop_process, service.proc)


# --------------------------------------------------------------------------- the report


def ends(batches: list[float]) -> str:
    """The median time of the first and of the last tenth of the batches."""
    k = max(1, len(batches) // 10)
    first, last = statistics.median(batches[:k]), statistics.median(batches[-k:])
    return f"{first * 1000:.0f} → {last * 1000:.0f} ms ({last / first:.2f}×)"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few thousand documents")
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--per-request", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=1, help="uploads at once")
    parser.add_argument("--before", type=Path, help="the checkout to compare with")
    parser.add_argument("--step", choices=("embed", "alone"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.docs, args.per_request = 3000, 500
    if args.step:  # one step, in this process, for the checkout on PYTHONPATH
        if args.step == "embed":
            result = embed_alone(args.docs, args.per_request)
        else:
            result = write_alone(args.docs, args.per_request, str(args.workdir / "alone"))
        print(json.dumps(result))
        return
    ours = HERE.parent
    roots = {"before": args.before.resolve(), "after": ours} if args.before else {"": ours}
    since = machine_load()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    n, per = args.docs, args.per_request
    say(f"== bench_ingest: {n:,} one-chunk documents, {per:,} a request, {args.in_flight} at once")
    for name, root in roots.items():
        say(f"   {name or 'code'}: {root} ({_commit(root)})")
    embed: dict[str, dict[str, Any]] = {}
    alone: dict[str, dict[str, Any]] = {}
    served: dict[str, dict[str, Any]] = {}
    try:
        say("1. the embedder alone")
        for name, root in roots.items():
            embed[name] = await asyncio.to_thread(
                in_process, "embed", min(n, 20_000), per, root, workdir
            )
        docs = documents(n)
        # each code's two runs one after the other (before's in the order alone, service;
        # after's service, alone): the machine's load, which drifts over minutes, weighs
        # alike on the two halves of each ratio
        for k, (name, root) in enumerate(roots.items()):
            label = name or "code"

            async def run_alone(name: str = name, root: Path = root, label: str = label) -> None:
                say(f"2. {label}: the embedder and deeplake alone, in one process")
                folder = workdir / f"alone-{label}"
                alone[name] = await asyncio.to_thread(in_process, "alone", n, per, root, folder)
                shutil.rmtree(folder, ignore_errors=True)

            async def run_service(name: str = name, root: Path = root, label: str = label) -> None:
                say(f"3. {label}: the service")
                async with fresh_database("bench-ingest") as (db_url, _where):
                    folder = workdir / f"service-{label}"
                    served[name] = await service_run(
                        root, db_url, folder, docs, per, args.in_flight
                    )
                shutil.rmtree(folder, ignore_errors=True)

            for step in (run_alone, run_service) if k % 2 == 0 else (run_service, run_alone):
                await step()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say("")
    say("| measure | " + " | ".join(name or "figure" for name in roots) + " |")
    say("|---|" + "---|" * len(roots))

    def row(label: str, cells: list[str]) -> None:
        say(f"| {label} | " + " | ".join(cells) + " |")

    row("embedder alone (chunks/s)", [f"{embed[k]['chunks_per_s']:,.0f}" for k in roots])
    if any("sklearn_chunks_per_s" in embed[k] for k in roots):
        row(
            "scikit-learn's HashingVectorizer, same texts (chunks/s)",
            [f"{embed[k].get('sklearn_chunks_per_s', 0):,.0f}" for k in roots],
        )
    row("embedder + deeplake alone (chunks/s)", [f"{alone[k]['chunks_per_s']:,.0f}" for k in roots])
    row("through the service (chunks/s)", [f"{served[k]['chunks_per_s']:,.0f}" for k in roots])
    row(
        "service ÷ alone",
        [f"**{served[k]['chunks_per_s'] / alone[k]['chunks_per_s']:.2f}×**" for k in roots],
    )
    row("alone: a batch, first → last tenth", [ends(alone[k]["batches"]) for k in roots])
    row("service: an upload, first → last tenth", [ends(served[k]["batches"]) for k in roots])
    say("")
    say(since())


def _commit(root: Path) -> str:
    proc = subprocess.run(
        [shutil.which("git") or "/usr/bin/git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "?"


if __name__ == "__main__":
    asyncio.run(main())
