"""Bad input is a 4xx naming the problem: never a 500, never a half-written run."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

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
            "documents.0.text: field required",
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
            {"json": {"user_id": U, "documents": [{"text": "a\u0000b"}]}},
            422,
            "documents.0.text: must not contain NUL characters",
        ),
        (
            "POST",
            "/documents",
            {
                "data": b'{"user_id": "%s", "documents": [{"text": "\\ud800"}]}' % U.encode(),
                "headers": {"Content-Type": "application/json"},
            },
            422,
            "documents.0.text: must be valid Unicode text (an unpaired surrogate)",
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
