"""Bad input is a 4xx naming the problem: never a 500, never a half-written run."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
import zlib
from typing import Any

import pytest

from deepmemory_service.gateway.auth import mint_token
from tests.conftest import Api

U = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "detail"),
    [
        ("POST", "/deep-memory/generate", {"data": b"{not json"}, 400, "body: not valid JSON"),
        ("POST", "/deep-memory/generate", {"json": []}, 422, "body: must be a JSON object"),
        ("POST", "/deep-memory/generate", {"json": {}}, 422, "user_id: field required"),
        (
            "POST",
            "/deep-memory/generate",
            {"json": {"user_id": "nope"}},
            422,
            "user_id: not a valid UUID: 'nope'",
        ),
        (
            "POST",
            "/deep-memory/generate",
            {"json": {"user_id": 7}},
            422,
            "user_id: must be a UUID string, got int",
        ),
        (
            "POST",
            "/deep-memory/generate",
            {"json": {"user_id": U, "questions_per_chunk": "3"}},
            422,
            'questions_per_chunk: must be an integer, got "3"',
        ),
        (
            "POST",
            "/deep-memory/generate",
            {"json": {"user_id": U, "questions_per_chunk": 0}},
            422,
            "questions_per_chunk: must be between 1 and 10, got 0",
        ),
        (
            "POST",
            "/deep-memory/generate",
            {"json": {"user_id": U, "questions_per_chunk": 11}},
            422,
            "questions_per_chunk: must be between 1 and 10, got 11",
        ),
        (
            "POST",
            "/deep-memory/generate",
            {"json": {"user_id": U, "auto_train": "yes"}},
            422,
            'auto_train: must be true or false, got "yes"',
        ),
        (
            "POST",
            "/deep-memory/generate",
            {"json": {"user_id": U, "qpc": 3}},
            422,
            "body: unknown field(s): qpc",
        ),
        (
            "POST",
            "/deep-memory/proceed",
            {"json": {"user_id": U}},
            422,
            "training_run_id: field required",
        ),
        (
            "POST",
            "/deep-memory/proceed",
            {"json": {"user_id": U, "training_run_id": "x"}},
            422,
            "training_run_id: not a valid UUID: 'x'",
        ),
        ("DELETE", f"/deep-memory/runs/{U}", {}, 422, "user_id: field required"),
        (
            "DELETE",
            "/deep-memory/runs/not-a-uuid",
            {"params": {"user_id": U}},
            422,
            "run_id: not a valid UUID: 'not-a-uuid'",
        ),
        (
            "GET",
            "/deep-memory/settings",
            {"params": {"user_id": "zzz"}},
            422,
            "user_id: not a valid UUID: 'zzz'",
        ),
        (
            "PUT",
            "/deep-memory/settings",
            {"json": {"user_id": U, "enabled": 1}},
            422,
            "enabled: must be true or false, got 1",
        ),
        (
            "POST",
            "/documents",
            {"json": {"user_id": U, "documents": []}},
            422,
            "documents: at least one document is required",
        ),
        (
            "POST",
            "/documents",
            {"json": {"user_id": U, "documents": [{"title": "t"}]}},
            422,
            "documents[0].text: field required",
        ),
        (
            "POST",
            "/documents",
            {"json": {"user_id": U, "documents": [{"text": "  \n "}]}},
            422,
            "documents[0].text: must contain some text",
        ),
        (
            "POST",
            "/documents",
            {"json": {"user_id": U, "documents": "text"}},
            422,
            "documents: must be a list, got str",
        ),
        (
            "POST",
            "/documents",
            {
                "json": {
                    "user_id": U,
                    "documents": [{"text": "t"}, {"text": "t", "title": "x" * 501}],
                }
            },
            422,
            "documents[1].title: at most 500 characters, got 501",
        ),
        (
            "POST",
            "/documents",
            {"json": {"user_id": U, "documents": [{"text": "a\u0000b"}]}},
            422,
            "documents[0].text: must not contain NUL characters",
        ),
        (
            "POST",
            "/documents",
            {
                "data": b'{"user_id": "%s", "documents": [{"text": "\\ud800"}]}' % U.encode(),
                "headers": {"Content-Type": "application/json"},
            },
            422,
            "documents[0].text: must be valid Unicode text (an unpaired surrogate)",
        ),
        ("GET", f"/events/stream/{U}", {"params": {"user_id": U}}, 404, "Job not found"),
        (
            "GET",
            "/events/stream/123",
            {"params": {"user_id": U}},
            422,
            "job_id: not a valid UUID: '123'",
        ),
        (
            "GET",
            "/deep-memory/runs",
            {"params": {"user_id": U, "limit": "x"}},
            422,
            "limit: must be an integer, got 'x'",
        ),
        ("GET", "/no-such-endpoint", {}, 404, "Not found"),
        ("PATCH", "/deep-memory/settings", {}, 405, "Method not allowed"),
    ],
)
async def test_bad_input_gets_a_4xx_naming_the_problem(
    api: Api, method: str, path: str, kwargs: dict[str, Any], status: int, detail: str
) -> None:
    code, body = await api.call(method, path, **kwargs)
    assert (code, body) == (status, {"detail": detail})


async def test_oversized_body_is_413_and_writes_nothing(api: Api) -> None:
    huge = {"user_id": U, "documents": [{"text": "x" * (1024 * 1024 + 10)}]}
    code, body = await api.call("POST", "/documents", json=huge)
    assert code == 413
    assert body == {"detail": "Request body too large: the limit is 1048576 bytes"}
    async with api.services.db.conn() as conn:
        assert await conn.raw.fetchval("SELECT count(*) FROM chunks") == 0


async def test_backend_requires_the_service_token(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        async with api.client.get(
            "/v1/api/deep-memory/settings", params={"user_id": U}, headers=headers
        ) as resp:
            assert resp.status == 401
            assert await resp.json() == {
                "detail": "Missing or invalid service token (Authorization: Bearer <token>)"
            }
    # the health check needs no token, under the API and at the root where probes look
    for path in ("/v1/api/healthz", "/healthz"):
        async with api.client.get(path) as resp:
            assert resp.status == 200, path
            assert await resp.json() == {"status": "ok"}


async def test_debug_supervisors_needs_the_admin_token(api: Api) -> None:
    await api.ingest(uuid.UUID(U), 1)
    await api.call("POST", "/deep-memory/generate", json={"user_id": U})
    code, _ = await api.call("GET", "/debug/supervisors")
    assert code == 401
    code, body = await api.call(
        "GET", "/debug/supervisors", headers={"X-Admin-Token": "test-admin-token"}
    )
    assert code == 200
    (sup,) = body["supervisors"]
    assert sup["user_id"] == U
    assert set(sup) >= {
        "inbox_depth",
        "current_run_id",
        "current_status",
        "workers_busy",
        "subscribers",
        "last_error",
    }


DEEP = ("[" * 1000 + "]" * 1000).encode()
# every endpoint that reads a JSON body, on the backend and on the gateway
JSON_ENDPOINTS = [
    ("POST", "/v1/api/deep-memory/generate"),
    ("POST", "/v1/api/deep-memory/proceed"),
    ("POST", "/v1/api/deep-memory/train"),
    ("POST", "/v1/api/deep-memory/cancel"),
    ("PUT", "/v1/api/deep-memory/settings"),
    ("POST", "/v1/api/documents"),
    ("POST", "/api/deep-memory/generate"),
    ("POST", "/api/deep-memory/proceed"),
    ("POST", "/api/deep-memory/train"),
    ("POST", "/api/deep-memory/cancel"),
    ("PUT", "/api/deep-memory/settings"),
    ("POST", "/api/documents"),
]


def _auth(api: Api, path: str) -> dict[str, str]:
    """The service token for the backend, a user's token for the gateway."""
    if path.startswith("/v1/api"):
        return api.headers
    token = mint_token(api.services.settings, uuid.UUID(U), 600)
    return {"Authorization": f"Bearer {token}"}


async def _send(
    api: Api, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, str, Any, dict[str, str]]:
    async with api.client.request(
        method, path, data=body, headers={**_auth(api, path), **headers}
    ) as resp:
        reply = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, resp.content_type, reply, dict(resp.headers)


async def test_json_nested_a_thousand_deep_is_a_400_everywhere(api: Api) -> None:
    deep_object = b'{"user_id": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}"
    for method, path in JSON_ENDPOINTS:
        for body in (DEEP, deep_object):
            code, _, reply, _ = await _send(api, method, path, body, {})
            assert (code, reply) == (
                400,
                {"detail": "body: JSON nested deeper than 32 levels"},
            ), (method, path)


@pytest.mark.parametrize(
    ("coding", "status", "detail"),
    [
        ("gzip", 400, "body: not valid gzip data (Content-Encoding: gzip)"),
        ("deflate", 400, "body: not valid deflate data (Content-Encoding: deflate)"),
        (
            "br",
            415,
            "Content-Encoding 'br' is not supported: send gzip, deflate or an unencoded body",
        ),
        (
            "zstd",
            415,
            "Content-Encoding 'zstd' is not supported: send gzip, deflate or an unencoded body",
        ),
    ],
)
async def test_a_body_that_cannot_be_decoded_is_a_json_4xx_everywhere(
    api: Api, coding: str, status: int, detail: str
) -> None:
    headers = {"Content-Encoding": coding, "Origin": str(api.client.make_url("/").origin())}
    for method, path in [*JSON_ENDPOINTS, ("POST", "/login")]:
        code, kind, reply, sent = await _send(api, method, path, b"not compressed at all", headers)
        assert (code, kind, reply) == (status, "application/json", {"detail": detail}), path
        if status == 415:
            assert sent["Accept-Encoding"] == "gzip, deflate"


async def test_an_encoded_body_is_decoded_and_bounded(api: Api) -> None:
    docs = {"user_id": U, "documents": [{"title": "zipped", "text": "Compressed text. " * 50}]}
    for coding, packed in (
        ("gzip", gzip.compress(json.dumps(docs).encode())),
        ("deflate", zlib.compress(json.dumps(docs).encode())),
    ):
        code, _, reply, _ = await _send(
            api, "POST", "/v1/api/documents", packed, {"Content-Encoding": coding}
        )
        assert code == 201, reply
    # a few kilobytes that inflate past the body limit are refused like a large body
    bomb = gzip.compress(b'{"user_id": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    assert len(bomb) < 10_000
    code, _, reply, _ = await _send(
        api, "POST", "/v1/api/documents", bomb, {"Content-Encoding": "gzip"}
    )
    assert (code, reply) == (413, {"detail": "Request body too large: the limit is 1048576 bytes"})


async def test_a_bad_last_event_id_is_a_400_before_the_stream(api: Api) -> None:
    await api.ingest(uuid.UUID(U), 2)
    _, accepted = await api.call("POST", "/deep-memory/generate", json={"user_id": U})
    job = accepted["job_id"]
    for path in (f"/v1/api/events/stream/{job}?user_id={U}", f"/api/events/stream/{job}"):
        for last in ("²", "9223372036854775808", "-1", "1e3", "٣"):
            headers = {**_auth(api, path), "Last-Event-ID": last}
            async with asyncio.timeout(10), api.client.get(path, headers=headers) as resp:
                assert (resp.status, resp.content_type) == (400, "application/json"), path
                assert await resp.json() == {
                    "detail": "Last-Event-ID: must be an event id (an integer from 0 to "
                    f"9223372036854775807), got {last!r}"
                }
