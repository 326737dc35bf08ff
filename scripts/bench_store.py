"""What a vector store in a bucket (s3://) costs against a local one, as a client sees it, in
one run: two real `serve --role backend` processes per kind of store on one PostgreSQL, one
that uploads and one that searches (and so reads what the other wrote). The s3:// ones use a
local S3-compatible server (moto, in a process of its own: its requests cost ~4 ms of its
CPU each, plus botocore's on the client), reached directly and through a proxy that delays
every request by `--rtt-ms` (20 by default), as a network to a real S3 would. The steps
alternate between the kinds, so that the machine's load weighs on all alike.

1. seed: U users, each a corpus of C chunks, uploaded in requests of B chunks
2. cold search: the searching instance's first search of each user (the whole store read)
3. warm search: searches of a version already read (the search cache in front of the
   store: `ChunkStore` keeps the last version it read)
4. uploads of N chunks onto the first user's store, each followed by a search on the other
   instance (which reads the new version: only its new rows, on top of what it holds); an
   s3:// store compacts its commit chain into a new generation every 16 uploads
5. s3:// only: the bucket frozen (SIGSTOP): how soon an upload is answered 503

Usage: scripts/bench_store [--quick] [--rtt-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import (  # scripts/, beside this file
    Latency,
    backend_env,
    free_port,
    fresh_database,
    machine_load,
    say,
    start_backend,
    stop_process,
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


@asynccontextmanager
async def delayed(port: int, delay_s: float) -> AsyncIterator[int]:
    """A loopback proxy to `port` that hands on each piece of a request `delay_s` after it
    came (latency, not bandwidth: pieces are not delayed one after another); its port."""
    loop = asyncio.get_running_loop()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, by: float) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def feed() -> None:
            try:
                while data := await reader.read(65536):
                    queue.put_nowait((loop.time() + by, data))
            finally:
                queue.put_nowait(None)

        feeder = asyncio.create_task(feed())
        try:
            while (item := await queue.get()) is not None:
                due, data = item
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            feeder.cancel()
            writer.close()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(
            pump(reader, up_writer, delay_s), pump(up_reader, writer, 0.0), return_exceptions=True
        )

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def start(
    workdir: Path, name: str, db_url: str, env: dict[str, str], log_dir: Path
) -> Instance:
    port = free_port()
    data = workdir / name
    environ = {
        **backend_env(data, data, db_url, TOKEN),
        "DEEPMEMORY_HTTP_ROLE": "backend",
        "DEEPMEMORY_INSTANCE_ID": f"bench-{name}",
        # the body limit fits a seeding request
        "DEEPMEMORY_HTTP_MAX_BODY_BYTES": str(8 * 2**20),
        **env,
    }
    log = log_dir / f"{name}.log"
    proc = await start_backend(sys.executable, None, port, environ, log, name)
    return Instance(name, port, proc)


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
    """p50 / p90 / max of each measure per kind, and how many times the first's p50."""
    base = kinds[0]
    say("")
    say("| measure | " + " | ".join(f"{k.name}: p50 / p90 / max" for k in kinds) + " |")
    say("|---|" + "---|" * len(kinds))
    measures = dict.fromkeys(m for k in kinds for m in k.seconds)
    for measure in measures:
        cells = []
        for kind in kinds:
            seconds = kind.seconds.get(measure, [])
            if not seconds:
                cells.append("—")
                continue
            lat = Latency.of(seconds)
            cell = f"{lat.p50:.0f} / {lat.p90:.0f} / {lat.max:.0f} ms"
            if kind is not base and base.seconds.get(measure):
                cell += f" (×{lat.p50 / Latency.of(base.seconds[measure]).p50:.1f})"
            cells.append(cell)
        n = max(len(k.seconds.get(measure, [])) for k in kinds)
        say(f"| {measure} (n={n}) | " + " | ".join(cells) + " |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--rtt-ms", type=float, default=20.0, help="delay added to each request to the bucket"
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    since = machine_load()
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
    started: list[Instance] = []
    async with fresh_database("bench-store") as (db_url, where):
        with ObjectStoreServer() as s3:
            async with delayed(s3.port, args.rtt_ms / 1000) as far:
                bucket = s3.bucket("bench")
                say(f"== bench_store: {where}; moto S3 server on {s3.endpoint}; logs in {workdir}")
                remote = {
                    **s3.environment(),
                    "DEEPMEMORY_STORE_PATH": f"s3://{bucket}/s/{{user_id}}",
                }
                kinds = []
                try:
                    # local stores are shared through one data directory (one machine's disk);
                    # s3:// ones through the bucket, each instance with a directory of its own
                    for name, env in (
                        ("local", {"DEEPMEMORY_DATA_DIR": str(workdir / "local-shared")}),
                        ("s3, loopback", remote),
                        (
                            f"s3, +{args.rtt_ms:g} ms a request",
                            {**remote, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{far}"},
                        ),
                    ):
                        tag = f"k{len(kinds)}"
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
