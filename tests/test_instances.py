"""Several real `serve` processes on one PostgreSQL: the rules hold across instances, events
cross between them, and a process killed with SIGKILL leaves every run recoverable."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import attrs
import pytest

from deepmemory_service.testing.standin_llm import (
    CONFIG,
    STATS,
    StandinConfig,
    create_standin_app,
)
from tests.conftest import assert_one_pair_set_per_chunk, poll, wait_generated

TOKEN = "instances-service-token"
KILLS = int(os.environ.get("DEEPMEMORY_TEST_KILLS", "10"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define
class Instance:
    url: str
    proc: subprocess.Popen[bytes]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.request(method, f"{self.url}/v1/api{path}", **kwargs) as resp,
        ):
            return resp.status, await resp.json()

    async def run(self, user: uuid.UUID, run_id: str) -> dict[str, Any]:
        code, run = await self.call(
            "GET", f"/deep-memory/runs/{run_id}", params={"user_id": str(user)}
        )
        assert code == 200, run
        return dict(run)


@pytest.fixture
async def cluster(
    fresh_db: Callable[..., Awaitable[str]], template_db: str, tmp_path: Path, aiohttp_server: Any
) -> AsyncIterator[Any]:
    """`start(**env)` launches a backend process on a shared fresh database (`env`: more
    settings, `DEEPMEMORY_LLM_RPM="60"` say); all are killed after."""
    db_url = await fresh_db(template_db)
    standin = await aiohttp_server(create_standin_app(StandinConfig(latency_ms=15)))
    started: list[Instance] = []

    async def start(**extra: str) -> Instance:
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "DEEPMEMORY_DATABASE_URL": db_url,
            "DEEPMEMORY_DATA_DIR": str(tmp_path / "data"),
            "DEEPMEMORY_SERVICE_TOKEN": TOKEN,
            "DEEPMEMORY_HTTP_ROLE": "backend",
            "DEEPMEMORY_GENERATOR": "llm",
            "DEEPMEMORY_LLM_BASE_URL": str(standin.make_url("/v1")),
            "DEEPMEMORY_LLM_BACKOFF_BASE_S": "0.01",
            "DEEPMEMORY_CONCURRENCY": "4",
            "DEEPMEMORY_LEASE_TTL_S": "1.0",
            "DEEPMEMORY_LEASE_HEARTBEAT_S": "0.2",
            "DEEPMEMORY_LEASE_SWEEP_S": "0.2",
            "DEEPMEMORY_LOG_LEVEL": "warning",
            **extra,
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deepmemory_service",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        instance = Instance(f"http://127.0.0.1:{port}", proc)
        started.append(instance)
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert proc.poll() is None, "the service exited during start-up"
                try:
                    async with http.get(f"{instance.url}/v1/api/healthz") as resp:
                        if resp.status == 200:
                            return instance
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "the service did not start"
                await asyncio.sleep(0.05)

    try:
        yield start, db_url, standin
    finally:
        for instance in started:
            instance.kill()


async def ingest(instance: Instance, user: uuid.UUID, n: int) -> None:
    docs = [
        {"text": f"Chunk {i} covers component{i} and its link to module{i % 7}."} for i in range(n)
    ]
    code, body = await instance.call(
        "POST", "/documents", json={"user_id": str(user), "documents": docs}
    )
    assert code == 201, body


async def wait_status(
    instance: Instance, user: uuid.UUID, run_id: str, *statuses: str, within: float = 60
) -> dict[str, Any]:
    return await poll(
        lambda: instance.run(user, run_id),
        lambda run: run["status"] in statuses,
        lambda run: f"run stayed {run['status']}",
        within,
    )


async def read_events(
    instance: Instance, user: uuid.UUID, job_id: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """A job's SSE stream until the server ends it: (id, event, data) per event."""
    events, fields = [], {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{instance.url}/v1/api/events/stream/{job_id}",
            params={"user_id": str(user)},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp,
    ):
        assert resp.status == 200
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if "data" in fields:
                    events.append((fields["id"], fields["event"], json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.strip()
    return events


async def test_a_hundred_generates_over_two_instances_make_one_run(cluster: Any) -> None:
    start, db_url, _ = cluster
    a, b = await start(), await start()
    user = uuid.uuid4()
    await ingest(a, user, 5)
    replies = await asyncio.gather(
        *(
            (a if i % 2 else b).call("POST", "/deep-memory/generate", json={"user_id": str(user)})
            for i in range(100)
        )
    )
    accepted = [body for code, body in replies if code == 202]
    conflicts = [body for code, body in replies if code == 409]
    assert len(accepted) == 1
    assert len(conflicts) == 99
    run_id = accepted[0]["training_run_id"]
    assert all(
        c
        == {
            "detail": "Cannot start new generation: an unfinished training run exists",
            "blocking_run_id": run_id,
            "blocking_run_status": c["blocking_run_status"],
        }
        for c in conflicts
    )
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM training_runs") == 1
    finally:
        await conn.close()


async def test_subscribers_on_one_instance_see_a_job_running_on_another(cluster: Any) -> None:
    start, _, _ = cluster
    a, b = await start(), await start()
    user = uuid.uuid4()
    await ingest(a, user, 60)
    _, body = await a.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 1}
    )

    on_b, on_a = await asyncio.wait_for(
        asyncio.gather(read_events(b, user, body["job_id"]), read_events(a, user, body["job_id"])),
        60,
    )
    assert on_b[-1][1] == "done"
    assert [e[:2] for e in on_b] == [e[:2] for e in on_a]


async def test_kill_9_during_generation_leaves_every_run_recoverable(cluster: Any) -> None:
    start, db_url, standin = cluster
    rng = random.Random(int(os.environ.get("DEEPMEMORY_TEST_SEED", "7")))
    instance = await start()
    user = uuid.uuid4()
    await ingest(instance, user, 200)
    _, body = await instance.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 2}
    )
    run_id = body["training_run_id"]
    mid_run = 0
    for _ in range(KILLS):
        # somewhere in the middle of the run, including before any pair is written
        await asyncio.sleep(rng.uniform(0.0, 0.25))
        instance.kill()
        instance = await start()
        run = await wait_status(instance, user, run_id, "generating_failed", "generated")
        if run["status"] == "generated":
            break
        assert "The worker running this run was lost" in run["error_message"]
        mid_run += 1
        code, reply = await instance.call(
            "POST", "/deep-memory/proceed", json={"user_id": str(user), "training_run_id": run_id}
        )
        assert code == 202, reply
        assert reply["message"].startswith("Resuming generation from chunk ")
    assert mid_run >= KILLS // 2, f"only {mid_run} kills landed during generation"
    standin.app[CONFIG].latency_ms = 0
    await wait_status(instance, user, run_id, "generated")
    await assert_one_pair_set_per_chunk(db_url, run_id, 2)


async def test_proceed_and_delete_racing_on_one_failed_run(cluster: Any) -> None:
    start, db_url, standin = cluster
    a, b = await start(), await start()
    for _ in range(3):
        user = uuid.uuid4()
        await ingest(a, user, 12)
        standin.app[CONFIG].fail_after = standin.app[STATS].calls + 4
        _, body = await a.call("POST", "/deep-memory/generate", json={"user_id": str(user)})
        run_id = body["training_run_id"]
        await wait_status(a, user, run_id, "generating_failed")
        standin.app[CONFIG].fail_after = None
        (p_code, _), (d_code, d_body) = await asyncio.gather(
            a.call(
                "POST",
                "/deep-memory/proceed",
                json={"user_id": str(user), "training_run_id": run_id},
            ),
            b.call("DELETE", f"/deep-memory/runs/{run_id}", params={"user_id": str(user)}),
        )
        if p_code == 202:
            # proceed won: the run is resuming, so the delete saw it unfailed or gone
            assert d_code == 400
            await wait_status(a, user, run_id, "generated")
            await assert_one_pair_set_per_chunk(db_url, run_id, 3)
        else:
            assert d_code == 200, d_body
            assert p_code == 404
            conn = await asyncpg.connect(db_url)
            try:
                left = await conn.fetchval(
                    "SELECT count(*) FROM training_pairs WHERE run_id = $1", uuid.UUID(run_id)
                )
            finally:
                await conn.close()
            assert left == 0


async def test_sigterm_mid_run_fails_the_run_cleanly_and_exits(cluster: Any) -> None:
    start, db_url, standin = cluster
    a, b = await start(), await start()
    user = uuid.uuid4()
    await ingest(a, user, 200)
    standin.app[CONFIG].latency_ms = 100
    _, body = await a.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 2}
    )
    run_id = body["training_run_id"]
    on_a = asyncio.create_task(read_events(a, user, body["job_id"]))
    run = await wait_generated(a, user, run_id, 8)
    assert run["status"] == "generating"

    stopping = time.monotonic()
    os.killpg(a.proc.pid, signal.SIGTERM)
    code = await asyncio.get_running_loop().run_in_executor(None, a.proc.wait, 30)
    took = time.monotonic() - stopping
    assert code == 0, f"exit code {code}"
    assert took < 15, f"shutdown took {took:.1f} s"

    # the stream on the stopped instance ended cleanly, with the run's failure as its last word
    events = await asyncio.wait_for(on_a, 5)
    _, last_event, last_data = events[-1]
    assert last_event == "failed"
    assert last_data["status"] == "generating_failed"
    _, run = await b.call("GET", f"/deep-memory/runs/{run_id}", params={"user_id": str(user)})
    assert run["status"] == "generating_failed"
    assert run["error_message"].startswith(
        "The worker running this run was lost (the service shut down)"
    )
    done = run["generated_chunks"]
    assert 8 <= done < 200
    assert run["pair_count"] == 2 * done, "written pairs were not kept"

    standin.app[CONFIG].latency_ms = 0
    code, reply = await b.call(
        "POST", "/deep-memory/proceed", json={"user_id": str(user), "training_run_id": run_id}
    )
    assert code == 202, reply
    assert reply["message"] == f"Resuming generation from chunk {done}/200"
    await wait_status(b, user, run_id, "generated")
    await assert_one_pair_set_per_chunk(db_url, run_id, 2)


async def test_documents_added_on_any_instance_are_searched_on_every_one(cluster: Any) -> None:
    start, _, _ = cluster
    a, b = await start(), await start()
    user = uuid.uuid4()

    async def search(instance: Instance, q: str) -> list[str]:
        code, found = await instance.call(
            "GET", "/search", params={"user_id": str(user), "q": q, "k": "10"}
        )
        assert code == 200, found
        return [hit["text"] for hit in found["results"]]

    await ingest(a, user, 3)
    assert len(await search(a, "component1")) == 3  # A now holds the vectors in memory
    zebra = "Zebras and quokkas graze beside the narwhal lagoon."
    code, body = await b.call(
        "POST", "/documents", json={"user_id": str(user), "documents": [{"text": zebra}]}
    )
    assert code == 201, body
    assert body["total_chunks"] == 4
    assert (await search(a, "zebras quokkas narwhal"))[0] == zebra
    code, body = await a.call(
        "POST", "/documents", json={"user_id": str(user), "documents": [{"text": "Okapi."}]}
    )
    assert code == 201, body
    assert len(await search(b, "okapi")) == 5
