"""Shared fixtures: a real PostgreSQL (embedded pgserver, or DEEPMEMORY_TEST_DATABASE_URL),
a fresh database per test cloned from a migrated template, and the real app over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import asyncpg
import attrs
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestClient

from deepmemory_service.api.keys import BACKEND, SERVICES, SUPERVISORS
from deepmemory_service.app import Overrides, create_app
from deepmemory_service.db import migrations
from deepmemory_service.db.embedded import EmbeddedPostgres
from deepmemory_service.platform.config import OpenAIEmbeddingSettings, Settings, load_settings
from deepmemory_service.runs.services import Services
from deepmemory_service.testing.checks import pairs_per_chunk
from deepmemory_service.testing.client import poll

# the `cluster` fixture: real service processes on one database; `s3`: an S3-compatible server
pytest_plugins = ("tests.cluster", "tests.s3")

# the kinds of test, each a folder of tests/ whose tests it marks (setup.cfg says what each holds)
KINDS = ("unit", "service", "processes", "browser", "real_llm")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks each test with its folder's kind, and with `database` when it uses the
    PostgreSQL under test (its fixtures reach `pg_url`): CI runs those of the kinds that use
    a database a second time against the machine's PostgreSQL (.ci/run says which)."""
    tests = Path(__file__).parent
    for item in items:
        kind = item.path.relative_to(tests).parts[0]
        if kind not in KINDS:
            raise pytest.UsageError(
                f"{item.path.relative_to(tests.parent)} is in no folder of a kind: "
                f"tests/{{{','.join(KINDS)}}}/"
            )
        item.add_marker(kind)
        fixtures = getattr(item, "fixturenames", ())
        if kind == "unit" and "pg_url" in fixtures:
            raise pytest.UsageError(f"{item.nodeid} uses PostgreSQL: it belongs in tests/service/")
        if kind == "service" and "cluster" in fixtures:
            raise pytest.UsageError(f"{item.nodeid} starts processes: it goes in tests/processes/")
        if "pg_url" in fixtures:
            item.add_marker(pytest.mark.database)


SERVICE_TOKEN = "test-service-token"
SECRET_KEY = "test-secret-key-of-at-least-32-bytes"
ADMIN_TOKEN = "test-admin-token"
TEMPLATE = f"dm_template_{os.getpid()}"


def _with_db(url: str, name: str) -> str:
    parsed = yarl.URL(url)
    # with_path drops the query, which carries pgserver's socket directory
    return str(parsed.with_path(f"/{name}").with_query(parsed.query))


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL of the server under test."""
    configured = os.environ.get("DEEPMEMORY_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    try:
        yield embedded.start()
    finally:
        embedded.stop()


async def _admin(pg_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(pg_url, timeout=10)


@pytest.fixture(scope="session")
def template_db(pg_url: str) -> Iterator[str]:
    async def make() -> None:
        admin = await _admin(pg_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
            await admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
        finally:
            await admin.close()
        await migrations.migrate_url(_with_db(pg_url, TEMPLATE))

    async def drop() -> None:
        admin = await _admin(pg_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(make())
    yield TEMPLATE
    asyncio.run(drop())


@pytest.fixture
async def fresh_db(pg_url: str) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """A factory of empty databases (optionally cloned from a template); dropped afterwards."""
    made: list[str] = []

    async def make(template: str | None = None) -> str:
        name = f"dm_test_{uuid.uuid4().hex[:12]}"
        admin = await _admin(pg_url)
        try:
            clause = f' TEMPLATE "{template}"' if template else ""
            await admin.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await admin.close()
        made.append(name)
        return _with_db(pg_url, name)

    yield make
    admin = await _admin(pg_url)
    try:
        for name in made:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(fresh_db: Callable[..., Awaitable[str]], template_db: str) -> str:
    return await fresh_db(template_db)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        {},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "database.url": database_url,
            "service_token": SERVICE_TOKEN,
            "secret_key": SECRET_KEY,
            "admin_token": ADMIN_TOKEN,
            "instance_id": f"test-{uuid.uuid4().hex[:8]}",
            "concurrency": 4,
            "log_format": "json",
            # the sweeper must not race a test's own runs
            "lease.sweep_s": 3600.0,
            # the stand-in LLM writes questions that pass the checks: none is asked again
            "questions.expected_reasks": 0.0,
        },
    )


@pytest.fixture
def make_app(settings: Settings) -> Callable[..., web.Application]:
    def make(settings_: Settings | None = None, **overrides: Any) -> web.Application:
        return create_app(settings_ or settings, Overrides(**overrides))

    return make


@attrs.define
class Api:
    """A test client that speaks to the backend with the service token."""

    client: TestClient[Any, Any]
    token: str = SERVICE_TOKEN

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def services(self) -> Services:
        return self.client.app[BACKEND][SERVICES]

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        async with self.client.request(method, f"/v1/api{path}", headers=headers, **kwargs) as resp:
            body = (
                await resp.json() if resp.content_type == "application/json" else await resp.text()
            )
            return resp.status, body

    async def ingest(self, user_id: uuid.UUID, n_chunks: int) -> int:
        """Adds `n_chunks` one-paragraph documents; returns the user's total chunks."""
        docs = [{"title": f"doc {i}", "text": paragraph(i)} for i in range(n_chunks)]
        status, body = await self.call(
            "POST", "/documents", json={"user_id": str(user_id), "documents": docs}
        )
        assert status == 201, body
        total: int = body["total_chunks"]
        return total

    async def run(self, user_id: uuid.UUID, run_id: str) -> dict[str, Any]:
        status, body = await self.call(
            "GET", f"/deep-memory/runs/{run_id}", params={"user_id": str(user_id)}
        )
        assert status == 200, body
        run: dict[str, Any] = body
        return run

    async def wait_status(
        self, user_id: uuid.UUID, run_id: str, *statuses: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = await self.run(user_id, run_id)
            if run["status"] in statuses:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run stayed {run['status']}, wanted {statuses}: {run}")
            await asyncio.sleep(0.02)

    async def debug(self) -> dict[str, Any]:
        """The service's `/debug/supervisors` snapshot: supervisors, broadcaster, uploads."""
        status, body = await self.call(
            "GET", "/debug/supervisors", headers={"X-Admin-Token": ADMIN_TOKEN}
        )
        assert status == 200, body
        snapshot: dict[str, Any] = body
        return snapshot

    async def idle(self, user_id: uuid.UUID) -> None:
        """Until the user's supervisor has no work left (no run task in flight)."""
        sup = self.client.app[BACKEND][SUPERVISORS].find(user_id)
        if sup is not None:
            await sup.wait_idle()


class RunReader(Protocol):
    """A client of one instance that reads a run: `Api`, or a test's own over real HTTP."""

    async def run(self, user_id: uuid.UUID, run_id: str) -> dict[str, Any]: ...


async def wait_generated(
    client: RunReader, user_id: uuid.UUID, run_id: str, at_least: int, within: float = 60.0
) -> dict[str, Any]:
    """Polls the run until it has generated at least `at_least` chunks, and returns it."""
    return await poll(
        lambda: client.run(user_id, run_id),
        lambda run: run["generated_chunks"] >= at_least,
        lambda run: (
            f"run stayed at {run['generated_chunks']} chunks, wanted {at_least} in {within:g} s"
        ),
        within,
    )


_TOPICS = [
    "PostgreSQL advisory locks serialise work across processes",
    "Server-sent events stream progress to the browser",
    "A linear adapter maps query embeddings toward relevant chunks",
    "Vector stores keep embeddings next to the text they encode",
    "Retries with exponential backoff honour the Retry-After header",
    "The supervisor actor owns one user's commands through an inbox",
]


def paragraph(i: int) -> str:
    topic = _TOPICS[i % len(_TOPICS)]
    return (
        f"Section {i}: {topic}. Item {i} explains detail number {i * 7 % 13} about "
        f"component{i} and its interaction with module{i % 5}."
    )


# make_app comes first: the database outlives the client, whose shutdown still writes to it
@pytest.fixture
async def api(make_app: Callable[..., web.Application], aiohttp_client: Any) -> Api:
    return Api(await aiohttp_client(make_app()))


@pytest.fixture
def api_factory(
    make_app: Callable[..., web.Application], aiohttp_client: Any
) -> Callable[..., Awaitable[Api]]:
    async def make(settings_: Settings | None = None, **overrides: Any) -> Api:
        return Api(await aiohttp_client(make_app(settings_, **overrides)))

    return make


@pytest.fixture
def user_id() -> uuid.UUID:
    return uuid.uuid4()


@attrs.frozen
class SseEvent:
    id: int
    event: str
    data: dict[str, Any]


async def read_stream(
    api: Api,
    user_id: uuid.UUID,
    job_id: str,
    *,
    last_event_id: int | None = None,
    timeout: float = 30.0,
    path: str | None = None,
    headers: dict[str, str] | None = None,
) -> list[SseEvent]:
    """Reads a job's SSE stream until the server closes it (after the terminal event)."""
    hdrs = dict(api.headers if path is None else {})
    hdrs.update(headers or {})
    if last_event_id is not None:
        hdrs["Last-Event-ID"] = str(last_event_id)
    url = path or f"/v1/api/events/stream/{job_id}"
    params = {"user_id": str(user_id)} if path is None else {}
    events: list[SseEvent] = []
    # the client's own timeout (5 minutes in all) would cut a long stream short
    whole = aiohttp.ClientTimeout(total=timeout)
    async with (
        asyncio.timeout(timeout),
        api.client.get(url, params=params, headers=hdrs, timeout=whole) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"
        fields: dict[str, str] = {}
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if "data" in fields:
                    events.append(
                        SseEvent(
                            int(fields["id"]),
                            fields.get("event", "message"),
                            json.loads(fields["data"]),
                        )
                    )
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return events


async def assert_one_pair_set_per_chunk(db_url: str, run_id: str, qpc: int) -> None:
    """Every chunk of the run's snapshot has exactly `qpc` pairs: none missing, none twice."""
    counts = await pairs_per_chunk(db_url, run_id)
    assert counts
    assert set(counts) == {qpc}, "a chunk has missing or duplicate pairs"


async def embeddings_api(
    aiohttp_server: Any,
    embeddings: Callable[[web.Request], Awaitable[web.Response]],
    dimension: int,
) -> OpenAIEmbeddingSettings:
    """Settings of an OpenAI embedder (key `sk-embed`) whose `/v1/embeddings` is the local
    stand-in `embeddings`."""
    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    server = await aiohttp_server(app)
    return attrs.evolve(
        load_settings({}).openai_embeddings,
        base_url=str(server.make_url("/v1")),
        api_key="sk-embed",
        dimension=dimension,
    )
