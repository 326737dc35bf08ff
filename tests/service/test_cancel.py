"""Cancel: a generating run stops within a second and keeps every pair written, a training
stops too, both become failed runs that Proceed and Delete apply to (through another
instance: processes/test_cancel_across_instances.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import attrs

from deepmemory_service.gateway.auth import mint_token
from deepmemory_service.llm.rate_budget import Lane
from deepmemory_service.models import Chunk
from deepmemory_service.testing.fakes import ControlledGenerator, ScriptedTrainer
from tests.conftest import Api, assert_one_pair_set_per_chunk, read_stream, wait_generated
from tests.service.test_gateway import gw


@attrs.define
class SlowGenerator(ControlledGenerator):
    """The offline generator at 50 ms a call; counts the calls begun after `stop_at`."""

    latency_s: float = 0.05
    stop_at: float | None = None
    late_calls: int = 0

    async def generate(self, chunk: Chunk, count: int, lane: Lane | None = None) -> list[str]:
        if self.stop_at is not None and time.monotonic() > self.stop_at:
            self.late_calls += 1
        await asyncio.sleep(self.latency_s)
        return await super().generate(chunk, count, lane)


@attrs.define
class OneChunkWaits(ControlledGenerator):
    """Answers every chunk but `held`, whose call never returns."""

    held: int = 0

    async def generate(self, chunk: Chunk, count: int, lane: Lane | None = None) -> list[str]:
        if chunk.id == self.held:
            await asyncio.Event().wait()
        return await super().generate(chunk, count, lane)


async def cancel(api: Api, user: uuid.UUID, run_id: str) -> tuple[int, Any]:
    return await api.call(
        "POST", "/deep-memory/cancel", json={"user_id": str(user), "training_run_id": run_id}
    )


async def test_cancel_stops_generation_without_waiting_for_calls_and_keeps_every_pair(
    api_factory: Any, database_url: str, user_id: uuid.UUID
) -> None:
    gen = SlowGenerator()
    api = await api_factory(generator=gen)
    await api.ingest(user_id, 200)
    _, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), "questions_per_chunk": 2}
    )
    run_id = body["training_run_id"]
    stream = asyncio.create_task(read_stream(api, user_id, body["job_id"]))
    await wait_generated(api, user_id, run_id, 20)

    # from here every call the run begins takes an hour: the reply cannot wait for the
    # calls in flight (how fast it comes is bench_generation's --phase cancel)
    gen.latency_s = 3600.0
    code, reply = await cancel(api, user_id, run_id)
    gen.stop_at = time.monotonic()
    assert code == 200, reply
    run = await api.run(user_id, run_id)
    done = run["generated_chunks"]
    assert run["status"] == reply["status"] == "generating_failed"
    assert reply["message"] == run["error_message"]
    assert run["error_message"].startswith("Generation cancelled at chunk ")
    assert run["error_message"].endswith(f"/200 ({done}/200 chunks done)")
    assert 20 <= done < 200
    assert run["pair_count"] == 2 * done
    events = await asyncio.wait_for(stream, 10)
    assert events[-1].event == "failed"
    assert events[-1].data["error_message"] == run["error_message"]
    await api.idle(user_id)
    assert gen.late_calls == 0  # nothing began after the reply

    code, resumed = await api.call(
        "POST", "/deep-memory/proceed", json={"user_id": str(user_id), "training_run_id": run_id}
    )
    assert code == 202
    assert resumed["message"] == f"Resuming generation from chunk {done}/200"
    gen.latency_s = 0.0
    await api.wait_status(user_id, run_id, "generated")
    await assert_one_pair_set_per_chunk(database_url, run_id, 2)


async def test_cancel_names_the_chunk_where_proceed_goes_on(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    """Chunks after the first ones are answered, the first stays open: the run stopped
    at chunk 1, with the others done."""
    gen = OneChunkWaits()
    api = await api_factory(generator=gen)
    await api.ingest(user_id, 6)
    async with api.services.db.conn() as conn:
        gen.held = await conn.raw.fetchval("SELECT min(id) FROM chunks WHERE user_id = $1", user_id)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    run_id = body["training_run_id"]
    await wait_generated(api, user_id, run_id, 5)
    code, reply = await cancel(api, user_id, run_id)
    assert code == 200
    assert reply["message"] == "Generation cancelled at chunk 1/6 (5/6 chunks done)"


async def test_cancel_stops_a_training_and_proceed_trains_again(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    trainer = ScriptedTrainer(gate=asyncio.Event())
    api = await api_factory(generator=ControlledGenerator(), trainer=trainer)
    await api.ingest(user_id, 10)
    _, body = await api.call(
        "POST",
        "/deep-memory/generate",
        json={"user_id": str(user_id), "questions_per_chunk": 2, "auto_train": True},
    )
    run_id = body["training_run_id"]
    await api.wait_status(user_id, run_id, "training")
    code, reply = await cancel(api, user_id, run_id)
    assert (code, reply["status"]) == (200, "training_failed")
    assert reply["message"] == "Training cancelled; its 20 pairs are kept (Proceed trains again)"
    run = await api.run(user_id, run_id)
    assert (run["status"], run["pair_count"]) == ("training_failed", 20)
    # the run says it was cancelled, not only failed (its status stays the contract's)
    assert run["cancel_requested_at"] is not None

    assert trainer.gate is not None
    trainer.gate.set()
    code, _ = await api.call(
        "POST", "/deep-memory/proceed", json={"user_id": str(user_id), "training_run_id": run_id}
    )
    assert code == 202
    resumed = await api.wait_status(user_id, run_id, "completed")
    assert resumed["cancel_requested_at"] is None


async def test_only_a_running_run_of_ones_own_can_be_cancelled(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen)
    await api.ingest(user_id, 4)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    run_id = body["training_run_id"]
    await api.wait_status(user_id, run_id, "generated")
    await api.idle(user_id)
    assert await cancel(api, user_id, run_id) == (
        400,
        {
            "detail": "Training run is not generating or training, so there is nothing to "
            "cancel; its status is generated"
        },
    )
    assert await cancel(api, uuid.uuid4(), run_id) == (404, {"detail": "Training run not found"})
    assert await cancel(api, user_id, str(uuid.uuid4())) == (
        404,
        {"detail": "Training run not found"},
    )
    code, problem = await api.call("POST", "/deep-memory/cancel", json={"user_id": str(user_id)})
    assert (code, problem) == (422, {"detail": "training_run_id: field required"})


async def test_cancel_through_the_gateway_acts_for_the_identity_only(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    gen = ControlledGenerator()
    gen.hold()
    api = await api_factory(generator=gen)
    await api.ingest(user_id, 4)
    settings = api.services.settings
    owner, stranger = mint_token(settings, user_id, 600), mint_token(settings, uuid.uuid4(), 600)
    code, body = await gw(api, "POST", "/api/deep-memory/generate", owner, json={})
    assert code == 202
    run_id = body["training_run_id"]
    await asyncio.wait_for(gen.started.wait(), 10)
    code, reply = await gw(
        api, "POST", "/api/deep-memory/cancel", stranger, json={"training_run_id": run_id}
    )
    assert (code, reply) == (404, {"detail": "Training run not found"})
    code, reply = await gw(
        api,
        "POST",
        "/api/deep-memory/cancel",
        owner,
        json={"training_run_id": run_id, "user_id": str(uuid.uuid4())},
    )
    assert code == 200, reply
    assert reply["message"] == "Generation cancelled at chunk 1/4 (0/4 chunks done)"
    gen.release()
