"""Cancel on any instance: a run generating in one `serve` process is cancelled through
another, at once, and proceeds there to exactly one pair set per chunk."""

from __future__ import annotations

import time
import uuid
from typing import Any

from deepmemory_service.testing.standin_llm import CONFIG
from tests.cluster import ingest
from tests.conftest import assert_one_pair_set_per_chunk, wait_generated


async def test_a_run_on_one_instance_is_cancelled_through_another(cluster: Any) -> None:
    start, db_url, standin = cluster
    standin.app[CONFIG].latency_ms = 50
    a, b = await start(), await start()
    user = uuid.uuid4()
    await ingest(a, user, 300)
    code, body = await a.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 1}
    )
    assert code == 202
    run_id = body["training_run_id"]
    await wait_generated(a, user, run_id, 10)
    asked = time.monotonic()
    code, reply = await b.call(
        "POST", "/deep-memory/cancel", json={"user_id": str(user), "training_run_id": run_id}
    )
    assert code == 200, reply
    assert time.monotonic() - asked < 1.0
    assert reply["status"] == "generating_failed"
    run = await a.run(user, run_id)
    assert run["error_message"].startswith("Generation cancelled at chunk ")
    assert run["generated_chunks"] < 300
    standin.app[CONFIG].latency_ms = 0
    code, _ = await b.call(
        "POST", "/deep-memory/proceed", json={"user_id": str(user), "training_run_id": run_id}
    )
    assert code == 202
    await b.until(user, run_id, "generated")
    await assert_one_pair_set_per_chunk(db_url, run_id, 1)
