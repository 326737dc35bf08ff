"""What a vector store in a bucket (s3://) costs against a local one, as a client sees it, in
one run: two real `serve --role backend` processes per kind of store on one PostgreSQL, one
that uploads and one that searches (and so reads what the other wrote); the s3:// ones on
a local S3-compatible server (moto, in a process of its own; its requests cost ~4 ms of its
CPU each, plus botocore's on the client, against tens of ms on a real S3 across a network:
read the request-bound figures with that in mind). The steps alternate between the kinds,
so that the machine's load weighs on both alike.

1. seed: U users, each a corpus of C chunks, uploaded in requests of B chunks
2. cold search: the searching instance's first search of each user (the whole store read)
3. warm search: searches of a version already read (the search cache in front of the
   store: `ChunkStore` keeps the last version it read)
4. uploads of N chunks onto the first user's store, each followed by a search on the other
   instance (which reads the new version: only its new rows, on top of what it holds); an
   s3:// store compacts its commit chain into a new generation every 16 uploads
5. s3:// only: the bucket frozen (SIGSTOP): how soon an upload is answered 503

Usage: scripts/bench_store [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import (  # scripts/, beside this file
    Latency,
    free_port,
    fresh_database,
    machine_load,
    say,
    stop_process,
    wait_http,
)

from deepmemory_service.testing.object_store import ObjectStoreServer

TOKEN = "bench-store-token"
WORDS = ["lease", "actor", "vector", "catalog", "lock", "chunk", "store", "commit", "crash"]


@dataclass(frozen=True)
class Sizes:
    users: int
    corpus: int
    batch: int
    uploads: int
    upload_chunks: int
    warm: int


FULL = Sizes(users=3, corpus=1000, batch=250, uploads=20, upload_chunks=10, warm=50)
QUICK = Sizes(users=1, corpus=100, batch=100, uploads=3, upload_chunks=5, warm=10)


@dataclass
class Instance:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/api"


@dataclass
class Kind:
    """One kind of store: its uploading and its searching instance, and what they measured."""

    name: str
    writer: Instance
    reader: Instance
    # users of its own: the catalog names each user's version of one kind of store
    users: list[uuid.UUID]
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, measure: str, seconds: float) -> None:
        self.seconds.setdefault(measure, []).append(seconds)


def docs(tag: str, n: int) -> list[dict[str, str]]:
    """`n` documents of one chunk each (~900 characters)."""
    return [
        {
            "title": f"{tag} {i}",
            "text": " ".join(
                f"{WORDS[(i * 7 + j) % len(WORDS)]}{(i + j) % 50}" for j in range(120)
            ),
        }
        for i in range(n)
    ]


async def start(
    workdir: Path, name: str, db_url: str, env: dict[str, str], log_dir: Path
) -> Instance:
    port = free_port()
    data = workdir / name
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data),
        "LANG": "C.UTF-8",
        "DEEPMEMORY_DATABASE_URL": db_url,
        "DEEPMEMORY_DATA_DIR": str(data),
        "DEEPMEMORY_SERVICE_TOKEN": TOKEN,
        "DEEPMEMORY_HTTP_ROLE": "backend",
        "DEEPMEMORY_INSTANCE_ID": f"bench-{name}",
        "DEEPMEMORY_LOG_LEVEL": "warning",
        "DEEPMEMORY_LOG_FORMAT": "console",
        # the body limit fits a seeding request
        "DEEPMEMORY_HTTP_MAX_BODY_BYTES": str(8 * 2**20),
        **env,
    }
    log = log_dir / f"{name}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "deepmemory_service", "serve", "--role", "backend"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    instance = Instance(name, port, proc)
    await wait_http(f"{instance.api}/healthz", proc, name, log)
    return instance


async def timed(
    http: aiohttp.ClientSession, method: str, url: str, expect: int, **kwargs: Any
) -> tuple[float, Any]:
    started = time.monotonic()
    async with http.request(method, url, **kwargs) as resp:
        body = await resp.json()
        took = time.monotonic() - started
        if resp.status != expect:
            raise RuntimeError(f"{method} {url}: {resp.status} {body}")
        return took, body


async def upload(
    http: aiohttp.ClientSession, kind: Kind, user: uuid.UUID, tag: str, n: int
) -> float:
    took, _ = await timed(
        http,
        "POST",
        f"{kind.writer.api}/documents",
        201,
        json={"user_id": str(user), "documents": docs(tag, n)},
    )
    return took


async def search(http: aiohttp.ClientSession, instance: Instance, user: uuid.UUID, q: str) -> float:
    took, _ = await timed(
        http,
        "GET",
        f"{instance.api}/search",
        200,
        params={"user_id": str(user), "q": q, "k": "10"},
    )
    return took


async def measure(kinds: list[Kind], sizes: Sizes, s3: ObjectStoreServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        say(f"1. seeding {sizes.users} user(s) × {sizes.corpus} chunks per kind")
        for u in range(sizes.users):
            for start_at in range(0, sizes.corpus, sizes.batch):
                for kind in kinds:
                    took = await upload(http, kind, kind.users[u], f"seed{start_at}", sizes.batch)
                    kind.add(f"upload of {sizes.batch} chunks (seeding)", took)
        say("2. cold searches (the whole store read)")
        for u in range(sizes.users):
            for kind in kinds:
                kind.add(
                    f"first search of a store of {sizes.corpus} chunks (cold)",
                    await search(http, kind.reader, kind.users[u], "vector3 commit5"),
                )
        say("3. warm searches (the version read before, from memory)")
        for i in range(sizes.warm):
            for kind in kinds:
                kind.add(
                    "search of a version read before (warm)",
                    await search(http, kind.reader, kind.users[0], f"lock{i % 50} store{i % 7}"),
                )
        say(f"4. {sizes.uploads} uploads of {sizes.upload_chunks} chunks, each searched after")
        for i in range(sizes.uploads):
            for kind in kinds:
                took = await upload(http, kind, kind.users[0], f"more{i}", sizes.upload_chunks)
                kind.add(f"upload of {sizes.upload_chunks} chunks", took)
                kind.add(
                    "search on another instance after that upload (new rows read)",
                    await search(http, kind.reader, kind.users[0], f"query{i % 50}"),
                )
        remote = [k for k in kinds if k.name.startswith("s3")]
        if remote:
            say("5. the bucket frozen: an upload's 503")
            s3.pause()
            try:
                started = time.monotonic()
                async with http.post(
                    f"{remote[0].writer.api}/documents",
                    json={"user_id": str(remote[0].users[0]), "documents": docs("frozen", 2)},
                ) as resp:
                    await resp.read()
                    status, retry = resp.status, resp.headers.get("Retry-After")
                remote[0].add(
                    f"upload while the bucket is frozen → {status} (Retry-After: {retry})",
                    time.monotonic() - started,
                )
            finally:
                s3.resume()


def table(kinds: list[Kind]) -> None:
    local, remote = kinds
    say("")
    say(f"| measure | {local.name}: p50 / p90 / max | {remote.name}: p50 / p90 / max | p50 × |")
    say("|---|---|---|---|")
    for measure in dict.fromkeys([*local.seconds, *remote.seconds]):
        here, there = local.seconds.get(measure, []), remote.seconds.get(measure, [])

        def cell(seconds: list[float]) -> str:
            if not seconds:
                return "—"
            lat = Latency.of(seconds)
            return f"{lat.p50:.0f} / {lat.p90:.0f} / {lat.max:.0f} ms (n={lat.n})"

        ratio = f"{Latency.of(there).p50 / Latency.of(here).p50:.1f}" if here and there else "—"
        say(f"| {measure} | {cell(here)} | {cell(there)} | {ratio} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    since = machine_load()
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
    started: list[Instance] = []
    async with fresh_database("bench-store") as (db_url, where):
        with ObjectStoreServer() as s3:
            bucket = s3.bucket("bench")
            say(f"== bench_store: {where}; moto S3 server on {s3.endpoint}; logs in {workdir}")
            remote_env = {
                **s3.environment(),
                "DEEPMEMORY_STORE_PATH": f"s3://{bucket}/stores/{{user_id}}",
            }
            try:
                kinds = []
                # local stores are shared through one data directory (one machine's disk);
                # s3:// ones through the bucket, each instance with a directory of its own
                local_env = {"DEEPMEMORY_DATA_DIR": str(workdir / "local-shared")}
                for name, env in (("local", local_env), ("s3 (moto)", remote_env)):
                    tag = name.split()[0]
                    writer = await start(workdir, f"{tag}-writer", db_url, env, workdir)
                    reader = await start(workdir, f"{tag}-reader", db_url, env, workdir)
                    started += [writer, reader]
                    users = [uuid.uuid4() for _ in range(sizes.users)]
                    kinds.append(Kind(name, writer, reader, users))
                await measure(kinds, sizes, s3)
            finally:
                for instance in started:
                    stop_process(instance.proc)
            objects = len(s3.keys(bucket))
    table(kinds)
    say("")
    say(f"objects in the bucket at the end: {objects}; {since()}")


if __name__ == "__main__":
    asyncio.run(main())
