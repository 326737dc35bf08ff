"""Database faults mid-run: connections dropped under a running generation, and a whole
PostgreSQL restart. Nothing is corrupted: the pool reconnects, the run either finishes or
fails cleanly, and a failed one is recovered by proceed to exactly one pair set per chunk."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import pytest
import yarl

from deepmemory_service.db import migrations
from deepmemory_service.db.database import Database
from deepmemory_service.llm.rate_budget import Lane
from deepmemory_service.models import Chunk
from deepmemory_service.platform.config import Settings
from deepmemory_service.testing.fakes import ControlledGenerator
from tests.conftest import (
    Api,
    assert_one_pair_set_per_chunk,
    read_stream,
    wait_generated,
)

QPC = 2


@attrs.define
class PacedGenerator(ControlledGenerator):
    """The offline generator at a fixed latency per call, so a run lasts through a fault."""

    latency_s: float = 0.02

    async def generate(self, chunk: Chunk, count: int, lane: Lane | None = None) -> list[str]:
        await asyncio.sleep(self.latency_s)
        return await super().generate(chunk, count, lane)


async def recover(api: Api, user: uuid.UUID, run_id: str) -> dict[str, Any]:
    """Waits for the run to end; a failed one is proceeded until it is generated."""
    for _ in range(3):
        run = await api.wait_status(user, run_id, "generated", "generating_failed", timeout=60)
        if run["status"] == "generated":
            return run
        assert run["error_message"], run
        code, reply = await api.call(
            "POST", "/deep-memory/proceed", json={"user_id": str(user), "training_run_id": run_id}
        )
        assert code == 202, reply
    raise AssertionError(f"run not recovered: {run}")


async def test_connections_dropped_mid_run(
    api_factory: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    gen = PacedGenerator(latency_s=0.01)
    api: Api = await api_factory(generator=gen)
    await api.ingest(user_id, 150)
    _, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), "questions_per_chunk": QPC}
    )
    run_id = body["training_run_id"]
    stream = asyncio.create_task(read_stream(api, user_id, body["job_id"], timeout=60))
    database = yarl.URL(settings.database.url).path.lstrip("/")
    admin = await asyncpg.connect(settings.database.url)
    try:
        for step in (20, 60, 100):
            await wait_generated(api, user_id, run_id, step)
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            assert killed > 0, "the service held no connection to drop"
    finally:
        await admin.close()

    events = await stream
    assert events[-1].event in {"done", "failed"}
    await recover(api, user_id, run_id)
    await assert_one_pair_set_per_chunk(settings.database.url, run_id, QPC)
    code, _ = await api.call("GET", "/deep-memory/settings", params={"user_id": str(user_id)})
    assert code == 200


@attrs.define
class OwnPostgres:
    """A PostgreSQL server of this test alone (pgserver's binaries), so it can be restarted."""

    server: Any

    @property
    def url(self) -> str:
        uri: str = self.server.get_uri()
        return uri

    def restart(self) -> None:
        from pgserver._commands import pg_ctl

        # `restart` reuses the options the server was started with (socket directory)
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.server.pgdata,
               user=self.server.system_user, timeout=60)  # fmt: skip

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        with contextlib.suppress(Exception):
            pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.server.pgdata,
                   user=self.server.system_user, timeout=60)  # fmt: skip


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[OwnPostgres]:
    from pgserver.postgres_server import get_server

    pgdata = tmp_path / "pg"
    pgdata.mkdir()
    own = OwnPostgres(get_server(pgdata, cleanup_mode=None))
    try:
        yield own
    finally:
        # pgserver stops only the postmaster it started; after a restart that one is gone
        own.stop()


async def test_postgres_restarted_mid_run(
    own_postgres: OwnPostgres, api_factory: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    await migrations.migrate_url(own_postgres.url)
    on_own = attrs.evolve(settings, database=attrs.evolve(settings.database, url=own_postgres.url))
    gen = PacedGenerator(latency_s=0.02)
    api: Api = await api_factory(on_own, generator=gen)
    total = await api.ingest(user_id, 200)
    _, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), "questions_per_chunk": QPC}
    )
    run_id = body["training_run_id"]
    stream = asyncio.create_task(read_stream(api, user_id, body["job_id"], timeout=90))
    await wait_generated(api, user_id, run_id, 30)

    await asyncio.get_running_loop().run_in_executor(None, own_postgres.restart)

    events = await stream
    assert events[-1].event in {"done", "failed"}
    run = await recover(api, user_id, run_id)
    assert run["generated_chunks"] == total
    await assert_one_pair_set_per_chunk(own_postgres.url, run_id, QPC)
    code, reply = await api.call("GET", "/deep-memory/settings", params={"user_id": str(user_id)})
    assert code == 200, reply


async def test_a_connection_lost_inside_a_block_raises_the_loss_not_a_pool_error(
    settings: Settings,
) -> None:
    """asyncpg gives a connection it saw close back to the pool at once; discarding it
    again must not replace the real error with "released back to the pool" (seen once, as
    the message a generation run failed with)."""
    db = await Database.connect(settings.database.url, min_size=1, max_size=2)

    async def lose_the_connection() -> None:
        async with db.conn() as conn:
            conn.raw.terminate()
            raise asyncpg.InterfaceError("simulated: the connection went away")

    try:
        with pytest.raises(asyncpg.InterfaceError, match="simulated"):
            await lose_the_connection()
        async with db.conn() as conn:
            assert await conn.raw.fetchval("SELECT 1") == 1
    finally:
        await db.close()
