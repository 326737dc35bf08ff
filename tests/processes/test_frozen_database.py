"""A database that stops answering (its server frozen with SIGSTOP: the postmaster and every
backend) is answered in seconds: the health check says so, the API's calls are 503 with
Retry-After, never a hang or a 500. After SIGCONT everything works without a restart, and a
run that was generating through the freeze completes, one pair set per chunk."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from deepmemory_service.db.embedded import EmbeddedPostgres
from deepmemory_service.gateway.auth import mint_token
from deepmemory_service.platform.config import load_settings
from deepmemory_service.testing.standin_llm import CONFIG
from tests.cluster import TOKEN, Instance, ingest
from tests.conftest import assert_one_pair_set_per_chunk, poll, wait_generated

SECRET = "frozen-database-secret-key-of-32-bytes"
NOT_ANSWERING = "Database not answering; retry shortly"
# a hang, not a speed target: the benchmark (scripts/bench_fairness) holds the figures
HANG_S = 60


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL server of this test's own: it is frozen, and the session's is shared."""
    embedded = EmbeddedPostgres(tmp_path / "frozen")
    url = embedded.start()
    try:
        yield embedded, url
    finally:
        embedded.stop()


def freeze(pgdata: Path) -> list[psutil.Process]:
    """SIGSTOP to the postmaster (which then starts no backend), then to every backend."""
    postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
    postmaster.send_signal(signal.SIGSTOP)
    stopped = [postmaster]
    for child in postmaster.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGSTOP)
            stopped.append(child)
    return stopped


def thaw(stopped: list[psutil.Process]) -> None:
    for process in reversed(stopped):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGCONT)


def user_headers(user: uuid.UUID) -> dict[str, str]:
    token = mint_token(load_settings({}, overrides={"secret_key": SECRET}), user, 600)
    return {"Authorization": f"Bearer {token}"}


async def ask_everything(
    service: Instance, user: uuid.UUID
) -> dict[str, tuple[int, str | None, Any]]:
    """Health (at the root and under /v1/api), the settings, a search, the runs, and a
    command (turning Deep Memory off), through the gateway where a user would call them:
    each one's (status, Retry-After, body)."""
    mine = user_headers(user)
    service_token = {"Authorization": f"Bearer {TOKEN}"}
    calls: dict[str, tuple[str, str, dict[str, str], Any]] = {
        "healthz": ("GET", "/healthz", {}, None),
        "backend healthz": ("GET", "/v1/api/healthz", {}, None),
        "settings": ("GET", "/api/deep-memory/settings", mine, None),
        "search": ("GET", "/api/deep-memory/search?q=component3&k=3", mine, None),
        "runs": ("GET", f"/v1/api/deep-memory/runs?user_id={user}", service_token, None),
        "turn off": ("PUT", "/api/deep-memory/settings", mine, {"enabled": False}),
    }

    async def ask(
        http: aiohttp.ClientSession, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, str | None, Any]:
        async with http.request(method, f"{service.url}{path}", headers=headers, json=body) as r:
            return r.status, r.headers.get("Retry-After"), await r.json()

    async with aiohttp.ClientSession() as http, asyncio.timeout(HANG_S):
        replies = await asyncio.gather(*(ask(http, *call) for call in calls.values()))
    return dict(zip(calls, replies, strict=True))


async def test_a_frozen_database_is_answered_in_seconds_and_recovered_from(
    cluster: Any, own_postgres: tuple[EmbeddedPostgres, str]
) -> None:
    start, _, standin = cluster
    embedded, db_url = own_postgres
    service = await start(
        DEEPMEMORY_DATABASE_URL=db_url,
        DEEPMEMORY_HTTP_ROLE="all",
        DEEPMEMORY_SECRET_KEY=SECRET,
        # the service's own leases: the freeze must not outlast them
        DEEPMEMORY_LEASE_TTL_S="30",
        DEEPMEMORY_LEASE_HEARTBEAT_S="10",
        DEEPMEMORY_LEASE_SWEEP_S="15",
    )
    user = uuid.uuid4()
    await ingest(service, user, 160)
    standin.app[CONFIG].latency_ms = 50
    code, accepted = await service.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 2}
    )
    assert code == 202, accepted
    run_id = accepted["training_run_id"]
    await wait_generated(service, user, run_id, 20)

    stopped = freeze(embedded.pgdata)
    try:
        # every answer comes while the database is still frozen: none waits for it
        frozen = await ask_everything(service, user)
    finally:
        thaw(stopped)
    unhealthy = (503, "1", {"status": "unavailable", "detail": NOT_ANSWERING})
    assert frozen == {
        "healthz": unhealthy,
        "backend healthz": unhealthy,
        "settings": (503, "1", {"detail": NOT_ANSWERING}),
        "search": (503, "1", {"detail": NOT_ANSWERING}),
        "runs": (503, "1", {"detail": NOT_ANSWERING}),
        "turn off": (503, "1", {"detail": NOT_ANSWERING}),
    }

    # back without a restart
    async def healthz() -> int:
        async with aiohttp.ClientSession() as http, http.get(f"{service.url}/healthz") as resp:
            return resp.status

    await poll(healthz, lambda code: code == 200, lambda code: f"health stayed {code}")
    after = await ask_everything(service, user)
    assert {name: status for name, (status, _, _) in after.items()} == dict.fromkeys(after, 200)
    assert after["search"][2]["results"], after["search"]
    run = await service.until(user, run_id, "generated", "generating_failed", within=120)
    assert run["status"] == "generated", run
    assert run["generated_chunks"] == run["total_chunks"] == 160
    await assert_one_pair_set_per_chunk(db_url, run_id, 2)
    assert service.proc.poll() is None
    assert "Traceback" not in service.log_tail(200_000)
