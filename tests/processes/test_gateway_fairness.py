"""One user's load never delays another user's calls through the gateway: event streams are
bounded per user (a 429 beyond) and have connections of their own, calls are bounded per
user, and a request whose client left while it waited opens nothing at the backend."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from typing import Any

import aiohttp
import attrs
import psutil
from aiohttp import web

from deepmemory_service.gateway.auth import mint_token
from deepmemory_service.platform.config import load_settings
from deepmemory_service.testing.standin_llm import CONFIG
from tests.cluster import Instance, ingest
from tests.conftest import poll

SECRET = "gateway-fairness-secret-key-of-32-bytes"
ADMIN = "gateway-fairness-admin"
# the shipped bound (`http.sse_streams_per_user`)
STREAM_LIMIT = 10
STREAM_REFUSED = (
    f"Too many event streams open for this user (at most {STREAM_LIMIT} at once); "
    "close one, or retry shortly"
)
# a hang, not a speed target: the benchmark (scripts/bench_fairness) holds the figures
HANG_S = 60


def bearer(user: uuid.UUID) -> dict[str, str]:
    token = mint_token(load_settings({}, overrides={"secret_key": SECRET}), user, 600)
    return {"Authorization": f"Bearer {token}"}


async def subscribers(backend: Instance) -> int:
    code, snapshot = await backend.call(
        "GET", "/debug/supervisors", headers={"X-Admin-Token": ADMIN}
    )
    assert code == 200, snapshot
    return int(snapshot["broadcaster"]["subscribers"])


async def held_job(instance: Instance, standin: Any, user: uuid.UUID) -> str:
    """A job of `user` that runs until the test ends (every LLM call is held), whose stream
    begins with the replay of its first event."""
    await ingest(instance, user, 4)
    standin.app[CONFIG].latency_ms = 3_600_000
    code, accepted = await instance.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user)}
    )
    assert code == 202, accepted
    return str(accepted["job_id"])


async def test_one_user_at_its_stream_limit_never_delays_another_users_calls(
    cluster: Any,
) -> None:
    """User A asks for 300 streams of its running job (the issue's measurement): it gets its
    bound, the rest are 429s, and user B's 20 calls meanwhile all succeed; a stream A closes
    frees its place, and once A's clients are gone so are its backend streams."""
    start, _, standin = cluster
    service = await start(
        DEEPMEMORY_HTTP_ROLE="all",
        DEEPMEMORY_SECRET_KEY=SECRET,
        DEEPMEMORY_ADMIN_TOKEN=ADMIN,
        DEEPMEMORY_LLM_TIMEOUT_S="3600",
    )
    a, b = uuid.uuid4(), uuid.uuid4()
    await ingest(service, b, 6)
    job = await held_job(service, standin, a)
    stream_url = f"{service.url}/api/events/stream/{job}"
    held: list[aiohttp.ClientResponse] = []
    refused: list[tuple[int, str | None, Any]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def open_stream() -> None:
            resp = await http.get(stream_url, headers=bearer(a))
            if resp.status == 200:
                held.append(resp)
                return
            refused.append((resp.status, resp.headers.get("Retry-After"), await resp.json()))
            resp.release()

        async with asyncio.timeout(HANG_S):
            await asyncio.gather(*(open_stream() for _ in range(300)))
        assert len(held) == STREAM_LIMIT
        assert refused == [(429, "1", {"detail": STREAM_REFUSED})] * (300 - STREAM_LIMIT)
        # the streams A holds are live: each has the replay of the job's first event
        for resp in held:
            assert b"event: status" in await resp.content.readuntil(b"\n\n")
        assert await subscribers(service) == STREAM_LIMIT

        async def call(path: str) -> tuple[int, str]:
            async with http.get(f"{service.url}/api{path}", headers=bearer(b)) as resp:
                return resp.status, await resp.text()

        paths = [
            "/deep-memory/settings",
            "/deep-memory/runs",
            "/documents",
            "/deep-memory/search?q=component3&k=3",
            "/deep-memory/estimate",
        ] * 4
        async with asyncio.timeout(HANG_S):
            replies = await asyncio.gather(*(call(path) for path in paths))
        assert [code for code, _ in replies] == [200] * 20, replies

        # one stream closed frees its place (once the gateway has seen its client go)
        held.pop().close()

        async def reopen() -> int:
            resp = await http.get(stream_url, headers=bearer(a))
            if resp.status == 200:
                held.append(resp)
            else:
                resp.release()
            return resp.status

        await poll(reopen, lambda code: code == 200, lambda code: f"still {code}")
        for resp in held:
            resp.close()
    await poll(
        lambda: subscribers(service),
        lambda n: n == 0,
        lambda n: f"{n} backend streams still open after their clients left",
    )
    assert "Traceback" not in service.log_tail(200_000)


def upstream_connections(gateway: Instance, backend: Instance) -> int:
    """The gateway's open TCP connections to the backend."""
    port = int(backend.url.rsplit(":", 1)[1])
    return sum(
        1
        for c in psutil.Process(gateway.proc.pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def test_a_client_that_leaves_while_its_stream_waits_opens_no_backend_stream(
    cluster: Any,
) -> None:
    """A stream request waits at the gateway for a backend that does not answer (stopped,
    SIGSTOP); its client leaves. The gateway lets the backend connection go, and once the
    backend is back the only stream it has is one a client still wants. Nothing logs a
    traceback."""
    start, _, standin = cluster
    backend = await start(
        DEEPMEMORY_ADMIN_TOKEN=ADMIN, DEEPMEMORY_LOG_LEVEL="info", DEEPMEMORY_LLM_TIMEOUT_S="3600"
    )
    gateway = await start(
        ready="/login",
        DEEPMEMORY_HTTP_ROLE="gateway",
        DEEPMEMORY_HTTP_BACKEND_URL=backend.url,
        DEEPMEMORY_SECRET_KEY=SECRET,
        DEEPMEMORY_LOG_LEVEL="info",
    )
    user = uuid.uuid4()
    job = await held_job(backend, standin, user)
    stream_url = f"{gateway.url}/api/events/stream/{job}"
    os.killpg(backend.proc.pid, signal.SIGSTOP)
    try:
        async with aiohttp.ClientSession() as leaving:
            waiting = asyncio.ensure_future(leaving.get(stream_url, headers=bearer(user)))
            # the gateway sent the request on, and waits for the stopped backend's answer
            await poll(
                lambda: asyncio.to_thread(upstream_connections, gateway, backend),
                lambda n: n == 1,
                lambda n: f"the gateway holds {n} connections to the backend",
            )
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        # the client has gone; so does the gateway's wait for the backend
        await poll(
            lambda: asyncio.to_thread(upstream_connections, gateway, backend),
            lambda n: n == 0,
            lambda n: f"the gateway still holds {n} connections to the backend",
        )
    finally:
        os.killpg(backend.proc.pid, signal.SIGCONT)
    async with (
        aiohttp.ClientSession() as http,
        asyncio.timeout(HANG_S),
        http.get(stream_url, headers=bearer(user)) as resp,
    ):
        assert resp.status == 200
        assert b"event: status" in await resp.content.readuntil(b"\n\n")
        assert await subscribers(backend) == 1
    assert "event stream not opened: the client left while it waited" in gateway.log_tail()
    for instance in (gateway, backend):
        assert "Traceback" not in instance.log_tail(200_000)


@attrs.define
class HeldBackend:
    """A stand-in backend whose settings reads for one user wait until released."""

    slow_user: uuid.UUID
    release: asyncio.Event = attrs.field(factory=asyncio.Event)
    arrived: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/api/deep-memory/settings", self.settings)
        return app

    async def settings(self, request: web.Request) -> web.Response:
        if request.query["user_id"] == str(self.slow_user):
            self.arrived += 1
            await self.release.wait()
        return web.json_response({"user_id": request.query["user_id"]})


async def test_calls_beyond_a_users_bound_are_429_while_other_users_pass(
    aiohttp_server: Any, api_factory: Any, settings: Any
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    fake = HeldBackend(a)
    server = await aiohttp_server(fake.app())
    split = attrs.evolve(
        settings,
        secret_key=SECRET,
        http=attrs.evolve(
            settings.http, role="gateway", backend_url=str(server.make_url("")), calls_per_user=3
        ),
    )
    api = await api_factory(split)

    async def get(user: uuid.UUID) -> tuple[int, str | None, Any]:
        async with api.client.get("/api/deep-memory/settings", headers=bearer(user)) as resp:
            return resp.status, resp.headers.get("Retry-After"), await resp.json()

    in_flight = [asyncio.ensure_future(get(a)) for _ in range(3)]
    await poll(
        lambda: asyncio.sleep(0, fake.arrived),
        lambda n: n == 3,
        lambda n: f"{n} of A's calls reached the backend",
    )
    assert await get(a) == (
        429,
        "1",
        {"detail": "Too many calls of this user in progress (at most 3 at once); retry shortly"},
    )
    assert await get(b) == (200, None, {"user_id": str(b)})
    fake.release.set()
    assert await asyncio.gather(*in_flight) == [(200, None, {"user_id": str(a)})] * 3
    # their places are free again
    assert await get(a) == (200, None, {"user_id": str(a)})
