"""The request pipeline: errors answered once as JSON, never a handler run twice (the reads
that retry themselves: service/test_read_retry.py)."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from deepmemory_service.api.middlewares import json_errors, request_context


async def test_a_handler_that_finds_the_database_down_runs_once(aiohttp_client: Any) -> None:
    """No blanket re-run: a GET may stream, or call a paid embeddings API, before it fails."""
    calls: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(request.path)
        raise asyncpg.PostgresConnectionError("connection refused")

    app = web.Application(middlewares=[request_context, json_errors])
    app.router.add_get("/read", handler)
    client = await aiohttp_client(app)
    async with client.get("/read") as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert await resp.json() == {"detail": "Database unavailable; retry shortly"}
    assert calls == ["/read"]
