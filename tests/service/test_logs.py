"""Logs carry the request id, user and run of what they describe, and never a secret."""

from __future__ import annotations

import uuid
from typing import Any

from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from deepmemory_service.testing.fakes import ControlledGenerator
from tests.conftest import SERVICE_TOKEN, Api


async def test_each_command_logs_under_its_own_request_id(api_factory: Any) -> None:
    api: Api = await api_factory(generator=ControlledGenerator(fail_after=1))
    user = uuid.uuid4()
    await api.ingest(user, 3)
    # the production chain starts with merge_contextvars; the capture keeps it
    with capture_logs(processors=[merge_contextvars]) as logs:
        _, body = await api.call(
            "POST",
            "/deep-memory/generate",
            json={"user_id": str(user)},
            headers={"X-Request-ID": "req-one"},
        )
        await api.wait_status(user, body["training_run_id"], "generating_failed")
        await api.idle(user)
        await api.call(
            "DELETE",
            f"/deep-memory/runs/{body['training_run_id']}",
            params={"user_id": str(user)},
            headers={"X-Request-ID": "req-two"},
        )
    created = next(e for e in logs if e["event"] == "run created")
    failed = next(e for e in logs if e["event"] == "generation failed")
    deleted = next(e for e in logs if e["event"] == "run deleted")
    assert created["request_id"] == "req-one"
    assert failed["request_id"] == "req-one"  # the work started by that request
    assert failed["run_id"] == body["training_run_id"]
    assert deleted["request_id"] == "req-two"
    assert deleted["user_id"] == str(user)
    assert SERVICE_TOKEN not in repr(logs)
