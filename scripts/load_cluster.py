"""The service processes a load benchmark drives: backends on one database, started with
`serve --role backend`, and the calls that seed and inspect them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import psutil
from benchlib import Standin, backend_env, stop_process, wait_http  # scripts/, beside this file

from deepmemory_service.testing.client import free_port

TOKEN = "bench-load-token"
ADMIN = "bench-load-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Instance:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.url}/v1/api"

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)


@dataclass
class Cluster:
    db_url: str
    llm: Standin
    workdir: Path
    started: list[Instance] = field(default_factory=list)

    async def start(self, name: str, **extra_env: str) -> Instance:
        port = free_port()
        env = {
            **backend_env(self.workdir, self.workdir / "data", self.db_url, TOKEN),
            "DEEPMEMORY_ADMIN_TOKEN": ADMIN,
            "DEEPMEMORY_HTTP_ROLE": "backend",
            "DEEPMEMORY_INSTANCE_ID": f"bench-{name}",
            "DEEPMEMORY_GENERATOR": "llm",
            "DEEPMEMORY_LLM_BASE_URL": f"{self.llm.url}/v1",
            "DEEPMEMORY_LLM_TIMEOUT_S": "10",
            # failures come fast: one retry after ~10 ms
            "DEEPMEMORY_LLM_MAX_RETRIES": "1",
            "DEEPMEMORY_LLM_BACKOFF_BASE_S": "0.01",
            "DEEPMEMORY_LLM_BACKOFF_MAX_S": "0.05",
            **extra_env,
        }
        log = self.workdir / f"instance-{name}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "deepmemory_service", "serve", "--role", "backend"),
                    *("--host", "127.0.0.1", "--port", str(port)),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        instance = Instance(name, port, proc, log)
        self.started.append(instance)
        await wait_http(f"{instance.api}/healthz", proc, f"instance {name}", log)
        return instance

    def stop_all(self) -> None:
        for instance in self.started:
            stop_process(instance.proc)


@dataclass(frozen=True)
class Broadcast:
    """An instance's broadcaster counters (from its debug endpoint)."""

    subscribers: int
    published: int
    lagged: int


async def debug(http: aiohttp.ClientSession, inst: Instance) -> Broadcast:
    async with http.get(f"{inst.api}/debug/supervisors", headers={"X-Admin-Token": ADMIN}) as resp:
        data = (await resp.json())["broadcaster"]
        return Broadcast(data["subscribers"], data["published"], data["lagged"])


async def ingest(http: aiohttp.ClientSession, inst: Instance, user: uuid.UUID, n: int) -> None:
    """`n` one-chunk documents through the API (chunks, embeddings, the user's store)."""
    docs = [
        {
            "title": f"doc {i}",
            "text": f"Section {i}: component{i} talks to module{i % 97} through "
            f"queue{i % 13}; its timeout is {i % 60} seconds.",
        }
        for i in range(n)
    ]
    async with http.post(
        f"{inst.api}/documents", json={"user_id": str(user), "documents": docs}
    ) as resp:
        assert resp.status == 201, await resp.text()


async def run_statuses(db_url: str, users: list[uuid.UUID]) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM training_runs WHERE user_id = ANY($1) "
            "GROUP BY status",
            users,
        )
    finally:
        await conn.close()
    return {r["status"]: r["n"] for r in rows}


async def wait_runs(db_url: str, users: list[uuid.UUID], status: str, within: float) -> float:
    started = time.monotonic()
    deadline = started + within
    while True:
        counts = await run_statuses(db_url, users)
        if counts.get(status, 0) == len(users):
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise RuntimeError(f"runs did not all become {status} in {within:g} s: {counts}")
        await asyncio.sleep(0.1)
