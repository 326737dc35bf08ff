"""What every reply of the service carries, and every 4xx in the API's JSON form: those of
the routes (404, 405) and those aiohttp's parser sends before any route sees the request
(an over-long URL or header, a bad request line), which a real `serve` process answers
as JSON without a traceback in its log and without quoting the request."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from deepmemory_service.gateway.auth import mint_token
from tests.cluster import Instance
from tests.conftest import Api


async def test_json_replies_are_never_stored_and_no_reply_is_sniffed(
    api: Api, user_id: uuid.UUID
) -> None:
    token = mint_token(api.services.settings, user_id, 600)
    bearer = {"Authorization": f"Bearer {token}"}
    json_paths = [
        ("/v1/api/deep-memory/settings", api.headers, {"user_id": str(user_id)}),
        ("/api/deep-memory/settings", bearer, {}),
        ("/api/documents", bearer, {}),
        ("/healthz", {}, {}),
        ("/v1/api/deep-memory/runs", api.headers, {"user_id": "not-a-uuid"}),  # a 422
        ("/api/nowhere", {}, {}),  # a 404
    ]
    for path, headers, params in json_paths:
        async with api.client.get(path, headers=headers, params=params) as resp:
            assert resp.content_type == "application/json", path
            assert resp.headers["Cache-Control"] == "no-store", path
            assert resp.headers["X-Content-Type-Options"] == "nosniff", path
    for path in ("/static/deep-memory.js", "/static/deep-memory.css", "/favicon.ico", "/login"):
        async with api.client.get(path) as resp:
            assert resp.status == 200, path
            assert resp.headers["X-Content-Type-Options"] == "nosniff", path
            assert resp.headers.get("Cache-Control") != "no-store" or path == "/login"


@pytest.mark.parametrize(
    ("method", "path", "status", "detail"),
    [
        ("GET", "/v1/api/nowhere", 404, "Not found"),
        ("GET", "/static/missing.js", 404, "Not found"),
        ("DELETE", "/v1/api/deep-memory/settings", 405, "Method not allowed"),
        ("PATCH", "/api/documents", 405, "Method not allowed"),
    ],
)
async def test_route_errors_are_json(
    api: Api, method: str, path: str, status: int, detail: str
) -> None:
    async with api.client.request(method, path, headers=api.headers) as resp:
        assert resp.status == status
        assert await resp.json() == {"detail": detail}


async def raw_request(instance: Instance, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends `request` as it is over a new connection; the reply's status, headers, body."""
    host, port = instance.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(30):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def test_requests_the_parser_refuses_are_json_400s_without_a_traceback(
    cluster: Any,
) -> None:
    start, _, _ = cluster
    service = await start(DEEPMEMORY_HTTP_ROLE="all")
    secret = "sekrit" + "x" * 20
    cases = [
        (
            b"GET /login?token=" + secret.encode() + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            "Bad request: the request line or a header is longer than 8190 bytes",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
            "Bad request: the request line or a header is longer than 8190 bytes",
        ),
        (b"HELLO THERE\r\n\r\n", "Bad request: malformed request line"),
        (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", "Bad request: malformed request line"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
            "Bad request: invalid header token",
        ),
        (
            b"POST /api/documents HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            "Bad request: invalid character in Content-Length",
        ),
    ]
    for request, detail in cases:
        status, headers, body = await raw_request(service, request)
        assert status == 400, body
        assert headers["content-type"].startswith("application/json")
        assert headers["x-content-type-options"] == "nosniff"
        assert json.loads(body) == {"detail": detail}
    log = service.log_tail(200_000)
    assert "Traceback" not in log
    assert secret not in log
    # still serving
    status, _, body = await raw_request(
        service, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200, body
