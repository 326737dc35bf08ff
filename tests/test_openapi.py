"""The OpenAPI document stays true to the router and payloads, and a schemathesis sweep of
the live backend finds no 5xx."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from deepmemory_service import payloads
from deepmemory_service.keys import BACKEND
from deepmemory_service.openapi import document, schema_of
from tests.conftest import SERVICE_TOKEN, Api

METHODS = {"get", "post", "put", "delete", "patch"}


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


def test_request_bodies_are_the_payload_classes() -> None:
    doc = document(10)
    generate = doc["paths"]["/deep-memory/generate"]["post"]["requestBody"]
    schema = generate["content"]["application/json"]["schema"]
    assert schema["required"] == ["user_id"]
    assert set(schema["properties"]) == {
        "user_id",
        "questions_per_chunk",
        "auto_train",
        "regenerate",
    }
    assert schema["properties"]["questions_per_chunk"]["maximum"] == 10
    assert schema["additionalProperties"] is False
    docs = schema_of(payloads.DocumentsIn)
    assert docs["properties"]["documents"]["items"]["required"] == ["text"]
    assert schema_of(payloads.ProceedIn)["required"] == ["training_run_id", "user_id"]


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
        "not_a_server_error",
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
        assert (await resp.json())["openapi"].startswith("3.")
