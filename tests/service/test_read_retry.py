"""The idempotent views retry their own reads: a connection killed under a read (as by a
database restart) is a retry, not a 503."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from deepmemory_service.testing.client import poll
from tests.conftest import Api


@pytest.mark.parametrize("path", ["/deep-memory/settings", "/deep-memory/runs", "/run"])
async def test_a_read_is_repeated_when_its_connection_is_killed_under_it(
    api: Api, user_id: uuid.UUID, path: str
) -> None:
    """The idempotent views retry their own reads: a connection terminated in the middle of
    the query (as by a database restart) is a retry, not a 503."""
    await api.ingest(user_id, 2)
    _, accepted = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    await api.idle(user_id)
    if path == "/run":
        path = f"/deep-memory/runs/{accepted['training_run_id']}"
    admin = await asyncpg.connect(api.services.db.url)

    async def waiting() -> list[int]:
        # pg_stat_activity is read once per transaction, and the admin's holds the lock: a
        # fresh snapshot each time (with a stale one the retry was seen after 10 s)
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        return [r["pid"] for r in rows]

    try:
        # the read blocks on the lock, so its connection can be killed mid-query
        lock = admin.transaction()
        await lock.start()
        await admin.execute("LOCK TABLE training_runs IN ACCESS EXCLUSIVE MODE")
        call = asyncio.ensure_future(api.call("GET", path, params={"user_id": str(user_id)}))
        (first,) = await poll(waiting, bool, lambda _: "the read never reached the database")
        await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        await poll(
            waiting,
            lambda pids: bool(set(pids) - {first}) or call.done(),
            lambda _: "the read was not tried again",
        )
        await lock.rollback()
        code, body = await call
        assert code == 200, body
    finally:
        await admin.close()
