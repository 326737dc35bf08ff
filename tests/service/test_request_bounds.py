"""A request's waits on the database are bounded (`db.Waits`), and tell a database that does
not answer from one that is busy with the same user's other work: a user's lock held longer
than `database.lock_wait_s` is a 503 saying so, not "not answering", and the command runs
once the lock is free."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import attrs

from deepmemory_service.platform.config import Settings
from tests.conftest import Api


async def test_a_users_lock_held_too_long_is_a_503_naming_it(
    api_factory: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    quick = attrs.evolve(settings, database=attrs.evolve(settings.database, lock_wait_s=0.3))
    api: Api = await api_factory(quick)
    body = {"user_id": str(user_id), "enabled": False}
    admin = await asyncpg.connect(settings.database.url)
    try:
        # the key the service's own lock takes (queries.sql: user_lock), held by another
        # session as a long upload would hold it
        await admin.execute(
            "SELECT pg_advisory_lock(hashtextextended('deepmemory:' || ($1::uuid)::text, 0))",
            user_id,
        )
        async with api.client.put(
            "/v1/api/deep-memory/settings", json=body, headers=api.headers
        ) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            assert await resp.json() == {
                "detail": "Another change to this user's documents or runs is in progress; "
                "retry shortly"
            }
        # another user's commands do not wait for it
        other = {"user_id": str(uuid.uuid4()), "enabled": False}
        code, _ = await api.call("PUT", "/deep-memory/settings", json=other)
        assert code == 200
        await admin.execute("SELECT pg_advisory_unlock_all()")
        code, reply = await api.call("PUT", "/deep-memory/settings", json=body)
        assert code == 200, reply
        assert reply["enabled"] is False
    finally:
        await admin.close()
