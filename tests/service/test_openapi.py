"""The OpenAPI document stays true to the router and the replies, and a schemathesis sweep of
the live backend finds no 5xx (true to the payload classes: unit/test_openapi_document.py)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis

from deepmemory_service.api.keys import BACKEND
from deepmemory_service.api.openapi import document
from deepmemory_service.api.routes import ENDPOINTS
from tests.conftest import SERVICE_TOKEN, Api, paragraph
from tests.service.test_runs_api import force_status
from tests.unit.test_openapi_document import SETTINGS_10_1000

METHODS = {"get", "post", "put", "delete", "patch"}
# every reply is checked against the document: its status is listed, its content type, its
# headers and its body match; and no 5xx
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def routed(api: Api) -> set[tuple[str, str]]:
    backend = api.client.app[BACKEND]
    found = set()
    for route in backend.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method.lower() in METHODS:
            found.add((route.method.lower(), path.removeprefix("/v1/api")))
    return found


async def test_every_route_is_described_and_every_description_routed(api: Api) -> None:
    code, doc = await api.call("GET", "/openapi.json", headers={"Authorization": ""})
    assert code == 200
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops if m in METHODS}
    assert described == routed(api)


@pytest.mark.timeout(600)
async def test_schemathesis_finds_no_server_errors(api: Api, tmp_path: Path) -> None:
    url = str(api.client.make_url("/v1/api/openapi.json"))
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        url,
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        "15",
        "--generation-deterministic",
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {SERVICE_TOKEN}",
        "--header",
        "X-Admin-Token: test-admin-token",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(text)
    assert proc.returncode == 0, text[-4000:]
    assert "Server error" not in text


async def test_openapi_needs_no_token(api: Any) -> None:
    async with api.client.get("/v1/api/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    upload = doc["paths"]["/documents"]["post"]["requestBody"]["content"]["application/json"]
    most = api.services.settings.uploads.max_documents
    assert upload["schema"]["properties"]["documents"]["maxItems"] == most


async def test_every_kind_of_reply_matches_the_document(api: Api, user_id: uuid.UUID) -> None:
    """Each reply body the service gives in a user's loop, checked against the document's
    schema for its route and status (schemathesis, with random ids, rarely reaches them)."""
    schema = schemathesis.openapi.from_dict(document(ENDPOINTS, SETTINGS_10_1000))
    base = str(api.client.make_url("/v1/api"))
    user = str(user_id)
    checked: list[tuple[str, str, int]] = []

    async def check(method: str, path: str, template: str, **kwargs: Any) -> Any:
        resp = await asyncio.to_thread(
            requests.request, method, base + path, headers=api.headers, timeout=30, **kwargs
        )
        schema[template][method].validate_response(resp)
        checked.append((method, template, resp.status_code))
        return resp.json()

    docs = {"user_id": user, "documents": [{"title": None, "text": paragraph(i)} for i in range(4)]}
    await check("POST", "/documents", "/documents", json=docs)
    await check(
        "POST",
        "/documents/file",
        "/documents/file",
        params={"user_id": user, "name": "crème.txt"},
        data="Crème brûlée\n".encode("latin-1"),
    )
    await check(
        "POST",
        "/documents/file",
        "/documents/file",
        params={"user_id": user, "name": "picture.png"},
        data=b"\x89PNG\r\n\x1a\n\x00\x00",
    )
    await check("GET", "/documents", "/documents", params={"user_id": user})
    accepted = await check(
        "POST", "/deep-memory/generate", "/deep-memory/generate", json={"user_id": user}
    )
    run_id = accepted["training_run_id"]
    await api.wait_status(user_id, run_id, "generated")
    await check("POST", "/deep-memory/generate", "/deep-memory/generate", json={"user_id": user})
    await check(
        "GET", f"/deep-memory/runs/{run_id}", "/deep-memory/runs/{run_id}", params={"user_id": user}
    )
    await check(
        "DELETE",
        f"/deep-memory/runs/{run_id}",
        "/deep-memory/runs/{run_id}",
        params={"user_id": user},
    )
    await force_status(api, run_id, "generating_failed", "Question generation failed: boom")
    await check(
        "POST",
        "/deep-memory/proceed",
        "/deep-memory/proceed",
        json={"user_id": user, "training_run_id": run_id},
    )
    await api.wait_status(user_id, run_id, "generated")
    await check("GET", "/deep-memory/runs", "/deep-memory/runs", params={"user_id": user})
    await check("GET", "/deep-memory/settings", "/deep-memory/settings", params={"user_id": user})
    await check(
        "PUT",
        "/deep-memory/settings",
        "/deep-memory/settings",
        json={"user_id": user, "enabled": True},
    )
    await check("GET", "/search", "/search", params={"user_id": user, "q": "vector stores"})
    await check("GET", "/deep-memory/estimate", "/deep-memory/estimate", params={"user_id": user})
    await check(
        "POST",
        "/deep-memory/cancel",
        "/deep-memory/cancel",
        json={"user_id": user, "training_run_id": run_id},
    )
    nobody = {"user_id": str(uuid.uuid4())}
    await check("POST", "/deep-memory/generate", "/deep-memory/generate", json=nobody)
    await check("GET", "/healthz", "/healthz")
    assert [(m, p, s) for m, p, s in checked] == [
        ("POST", "/documents", 201),
        ("POST", "/documents/file", 201),
        ("POST", "/documents/file", 422),
        ("GET", "/documents", 200),
        ("POST", "/deep-memory/generate", 202),
        ("POST", "/deep-memory/generate", 409),
        ("GET", "/deep-memory/runs/{run_id}", 200),
        ("DELETE", "/deep-memory/runs/{run_id}", 400),
        ("POST", "/deep-memory/proceed", 202),
        ("GET", "/deep-memory/runs", 200),
        ("GET", "/deep-memory/settings", 200),
        ("PUT", "/deep-memory/settings", 409),
        ("GET", "/search", 200),
        ("GET", "/deep-memory/estimate", 200),
        ("POST", "/deep-memory/cancel", 400),
        ("POST", "/deep-memory/generate", 400),
        ("GET", "/healthz", 200),
    ]
