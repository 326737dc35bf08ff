"""The spec's contract for generate, proceed, delete, train and settings, end to end."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import attrs
import pytest

from deepmemory_service.api.keys import BACKEND, SUPERVISORS
from deepmemory_service.llm.rate_budget import Lane
from deepmemory_service.models import Chunk, EventName, JobEvent
from deepmemory_service.runs.events import JobEvents
from deepmemory_service.testing.fakes import ControlledGenerator, ScriptedTrainer
from tests.conftest import Api

BLOCKING = ["generating", "generated", "training", "generating_failed", "training_failed"]
NOT_FAILED = ["generating", "generated", "training", "completed"]


async def generate(api: Api, user_id: uuid.UUID, **extra: Any) -> tuple[int, dict[str, Any]]:
    status, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), **extra}
    )
    return status, body


async def force_status(api: Api, run_id: str, status: str, error: str | None = None) -> None:
    """Puts a run in a status directly, as another instance or a crash could have left it."""
    async with api.services.db.conn() as conn:
        await conn.raw.execute(
            "UPDATE training_runs SET status = $2, error_message = $3, lease_owner = NULL, "
            "lease_expires_at = NULL WHERE id = $1",
            uuid.UUID(run_id),
            status,
            error,
        )


async def run_in_status(api: Api, gen: ControlledGenerator, user_id: uuid.UUID, status: str) -> str:
    """A run of `user_id` in `status` (a held generator keeps it `generating`)."""
    await api.ingest(user_id, 6)
    if status == "generating":
        gen.hold()
    code, body = await generate(api, user_id, questions_per_chunk=2)
    assert code == 202, body
    run_id: str = body["training_run_id"]
    if status == "generating":
        await asyncio.wait_for(gen.started.wait(), 10)
        return run_id
    await api.wait_status(user_id, run_id, "generated")
    await api.idle(user_id)
    if status != "generated":
        await force_status(api, run_id, status, "injected" if "failed" in status else None)
    return run_id


async def pair_count(api: Api, run_id: str) -> int:
    async with api.services.db.conn() as conn:
        value: int = await conn.raw.fetchval(
            "SELECT count(*) FROM training_pairs WHERE run_id = $1", uuid.UUID(run_id)
        )
    return value


# generate


async def test_generate_makes_one_pair_set_per_chunk(api_factory: Any, user_id: uuid.UUID) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen)
    await api.ingest(user_id, 20)
    status, body = await generate(api, user_id, questions_per_chunk=3)
    assert status == 202
    assert set(body) == {"job_id", "training_run_id"}
    run = await api.wait_status(user_id, body["training_run_id"], "generated")
    assert (run["total_chunks"], run["generated_chunks"], run["pair_count"]) == (20, 20, 60)
    assert await pair_count(api, body["training_run_id"]) == 60
    assert set(gen.calls.values()) == {1}
    assert len(gen.calls) == 20


async def supervisor_view(api: Api, user_id: uuid.UUID) -> dict[str, Any]:
    body = await api.debug()
    (view,) = [s for s in body["supervisors"] if s["user_id"] == str(user_id)]
    return dict(view)


async def test_the_debug_view_follows_the_work_and_forgets_it_when_it_ends(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    gen = ControlledGenerator()
    gen.hold()
    api = await api_factory(generator=gen)
    await api.ingest(user_id, 3)
    _, body = await generate(api, user_id)
    await asyncio.wait_for(gen.started.wait(), 10)
    busy = await supervisor_view(api, user_id)
    assert busy["current_run_id"] == body["training_run_id"]
    assert busy["current_job_id"] == body["job_id"]
    assert busy["current_status"] == "generating"
    assert busy["workers_busy"] >= 1
    assert busy["working"] is True

    gen.release()
    await api.wait_status(user_id, body["training_run_id"], "generated")
    await api.idle(user_id)
    idle = await supervisor_view(api, user_id)
    assert idle["working"] is False
    assert (idle["current_run_id"], idle["current_job_id"], idle["current_status"]) == (
        None,
        None,
        None,
    )
    assert idle["workers_busy"] == 0


@pytest.mark.parametrize("status", BLOCKING)
async def test_generate_is_blocked_by_every_unfinished_status(
    api_factory: Any, user_id: uuid.UUID, status: str
) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen)
    run_id = await run_in_status(api, gen, user_id, status)

    code, body = await generate(api, user_id)

    assert code == 409
    assert body == {
        "detail": "Cannot start new generation: an unfinished training run exists",
        "blocking_run_id": run_id,
        "blocking_run_status": status,
    }
    gen.release()


async def test_completed_run_does_not_block(api_factory: Any, user_id: uuid.UUID) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen)
    first = await run_in_status(api, gen, user_id, "completed")
    code, body = await generate(api, user_id)
    assert code == 202
    assert body["training_run_id"] != first


async def test_fifty_concurrent_generates_make_exactly_one_run(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    api = await api_factory(generator=ControlledGenerator())
    await api.ingest(user_id, 4)
    replies = await asyncio.gather(*(generate(api, user_id) for _ in range(50)))
    accepted = [body for code, body in replies if code == 202]
    conflicts = [body for code, body in replies if code == 409]
    assert len(accepted) == 1
    assert len(conflicts) == 49
    run_id = accepted[0]["training_run_id"]
    assert {c["blocking_run_id"] for c in conflicts} == {run_id}
    async with api.services.db.conn() as conn:
        runs = await conn.raw.fetchval(
            "SELECT count(*) FROM training_runs WHERE user_id = $1", user_id
        )
    assert runs == 1


async def test_generate_without_chunks_is_a_400(api: Api, user_id: uuid.UUID) -> None:
    code, body = await generate(api, user_id)
    assert code == 400
    assert "add documents first" in body["detail"]


@attrs.define
class UnstorableAnswer(ControlledGenerator):
    """Good answers for every chunk but the last, whose answer holds a NUL character; it
    comes only once every other chunk has been answered, so all of those are pending."""

    last_chunk: int = 0
    others: int = 0
    answered: asyncio.Event = attrs.field(factory=asyncio.Event)

    async def generate(self, chunk: Chunk, count: int, lane: Lane | None = None) -> list[str]:
        if chunk.id == self.last_chunk:
            await self.answered.wait()
            return ["What is\x00 this?", *(f"Question {i}?" for i in range(1, count))]
        questions = await super().generate(chunk, count, lane)
        if len(self.successes) == self.others:
            self.answered.set()
        return questions


async def test_an_answer_postgresql_cannot_store_fails_only_its_chunk(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    gen = UnstorableAnswer()
    api = await api_factory(generator=gen)
    await api.ingest(user_id, 8)
    async with api.services.db.conn() as conn:
        ids = await conn.raw.fetch("SELECT id FROM chunks WHERE user_id = $1 ORDER BY id", user_id)
    gen.last_chunk, gen.others = ids[-1]["id"], 7
    _, body = await generate(api, user_id, questions_per_chunk=2)
    run = await api.wait_status(user_id, body["training_run_id"], "generating_failed")
    assert run["error_message"] == (
        "Question generation failed at chunk 8/8: generator controlled returned a NUL "
        "character (7/8 chunks done)"
    )
    # every other chunk's answer, pending in the same batch, is stored
    assert run["pair_count"] == await pair_count(api, body["training_run_id"]) == 14


async def test_a_failure_names_the_chunks_place_in_the_run_not_its_id(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen)
    await api.ingest(uuid.uuid4(), 30)  # another user's chunks come first in the catalog
    await api.ingest(user_id, 10)
    async with api.services.db.conn() as conn:
        ids = await conn.raw.fetch("SELECT id FROM chunks WHERE user_id = $1 ORDER BY id", user_id)
    gen.fail_chunks = {ids[3]["id"]}
    _, body = await generate(api, user_id, questions_per_chunk=1)
    run = await api.wait_status(user_id, body["training_run_id"], "generating_failed")
    assert run["error_message"].startswith("Question generation failed at chunk 4/10: ")
    assert run["error_message"].endswith(f"({run['generated_chunks']}/10 chunks done)")


# proceed


async def test_proceed_resumes_generation_from_the_point_of_failure(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    gen = ControlledGenerator(fail_after=9)
    api = await api_factory(generator=gen)
    await api.ingest(user_id, 30)
    _, body = await generate(api, user_id, questions_per_chunk=2)
    run_id = body["training_run_id"]
    failed = await api.wait_status(user_id, run_id, "generating_failed")
    await api.idle(user_id)
    done = failed["generated_chunks"]
    assert 0 < done <= 9
    assert "Question generation failed" in failed["error_message"]
    assert f"({done}/30 chunks done)" in failed["error_message"]
    assert await pair_count(api, run_id) == done * 2
    covered_before = {c for c, n in gen.successes.items() if n}

    gen.fail_after = None
    calls_before = gen.total_calls
    code, reply = await api.call(
        "POST", "/deep-memory/proceed", json={"training_run_id": run_id, "user_id": str(user_id)}
    )

    assert code == 202
    assert reply["message"] == f"Resuming generation from chunk {done}/30"
    assert reply["training_run_id"] == run_id
    assert set(reply) == {"job_id", "training_run_id", "message"}
    run = await api.wait_status(user_id, run_id, "generated")
    assert run["error_message"] is None
    await api.idle(user_id)
    # exactly one call per uncovered chunk, none for the covered ones
    assert gen.total_calls - calls_before == 30 - done
    assert all(gen.successes[c] == 1 for c in covered_before)
    assert len(gen.successes) == 30
    assert set(gen.successes.values()) == {1}
    assert await pair_count(api, run_id) == 60


async def test_a_proceed_before_the_failed_works_last_event_is_accepted_and_resumes(
    api_factory: Any, user_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's failed status is written before its work has ended (its `failed` event, its
    job's end): a proceed in that gap is accepted, and the resumed work starts after it."""
    gen = ControlledGenerator(fail_after=3)
    api = await api_factory(generator=gen)
    await api.ingest(user_id, 10)
    tail = asyncio.Event()
    emit = JobEvents.emit

    async def emit_failed_when_let(
        self: JobEvents, job_id: uuid.UUID, event: EventName, data: dict[str, Any]
    ) -> JobEvent:
        if event == "failed":
            await tail.wait()
        return await emit(self, job_id, event, data)

    monkeypatch.setattr(JobEvents, "emit", emit_failed_when_let)
    _, body = await generate(api, user_id)
    run_id = body["training_run_id"]
    await api.wait_status(user_id, run_id, "generating_failed")
    sup = api.client.app[BACKEND][SUPERVISORS].find(user_id)
    assert sup is not None
    assert sup.working, "the failed run's work ended before its event"

    gen.fail_after = None
    code, reply = await api.call(
        "POST", "/deep-memory/proceed", json={"training_run_id": run_id, "user_id": str(user_id)}
    )
    assert code == 202, reply
    tail.set()
    await api.wait_status(user_id, run_id, "generated")
    await api.idle(user_id)
    assert await pair_count(api, run_id) == 30


async def test_proceed_resubmits_the_same_pairs_after_training_failed(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    trainer = ScriptedTrainer(failures=1)
    api = await api_factory(generator=ControlledGenerator(), trainer=trainer)
    await api.ingest(user_id, 10)
    _, body = await generate(api, user_id, questions_per_chunk=2, auto_train=True)
    run_id = body["training_run_id"]
    failed = await api.wait_status(user_id, run_id, "training_failed")
    assert failed["error_message"] == "Training failed: injected trainer fault: job failed upstream"
    await api.idle(user_id)

    code, reply = await api.call(
        "POST", "/deep-memory/proceed", json={"training_run_id": run_id, "user_id": str(user_id)}
    )

    assert code == 202
    assert reply["message"] == "Resuming training with 20 pairs from chunk 10/10"
    await api.wait_status(user_id, run_id, "completed")
    assert len(trainer.submissions) == 2
    assert trainer.submissions[0] == trainer.submissions[1]
    assert len(trainer.submissions[1]) == 20


async def test_proceed_unknown_run_is_404(api: Api, user_id: uuid.UUID) -> None:
    code, body = await api.call(
        "POST",
        "/deep-memory/proceed",
        json={"training_run_id": str(uuid.uuid4()), "user_id": str(user_id)},
    )
    assert code == 404
    assert body == {"detail": "Training run not found"}


async def test_proceed_and_delete_of_another_users_run_are_404(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen)
    run_id = await run_in_status(api, gen, user_id, "generating_failed")
    other = str(uuid.uuid4())

    code, body = await api.call(
        "POST", "/deep-memory/proceed", json={"training_run_id": run_id, "user_id": other}
    )
    assert (code, body) == (404, {"detail": "Training run not found"})
    code, body = await api.call("DELETE", f"/deep-memory/runs/{run_id}", params={"user_id": other})
    assert (code, body) == (404, {"detail": "Training run not found"})
    code, body = await api.call("GET", f"/deep-memory/runs/{run_id}", params={"user_id": other})
    assert (code, body) == (404, {"detail": "Training run not found"})
    assert (await api.run(user_id, run_id))["status"] == "generating_failed"


@pytest.mark.parametrize("status", NOT_FAILED)
async def test_proceed_and_delete_refuse_runs_that_are_not_failed(
    api_factory: Any, user_id: uuid.UUID, status: str
) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen)
    run_id = await run_in_status(api, gen, user_id, status)
    expected = (
        "Training run is not in a failed status (generating_failed or "
        f"training_failed); its status is {status}"
    )

    code, body = await api.call(
        "POST", "/deep-memory/proceed", json={"training_run_id": run_id, "user_id": str(user_id)}
    )
    assert (code, body) == (400, {"detail": expected})
    code, body = await api.call(
        "DELETE", f"/deep-memory/runs/{run_id}", params={"user_id": str(user_id)}
    )
    assert (code, body) == (400, {"detail": expected})
    gen.release()
    # the refused delete removed nothing: the run is there and, once generation has ended,
    # holds all 6 chunks x 2 questions
    await api.wait_status(user_id, run_id, "generated" if status == "generating" else status)
    assert await pair_count(api, run_id) == 12


# delete


@pytest.mark.parametrize("status", ["generating_failed", "training_failed"])
async def test_delete_failed_run_cascades_to_its_pairs(
    api_factory: Any, user_id: uuid.UUID, status: str
) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen)
    run_id = await run_in_status(api, gen, user_id, status)
    pairs = await pair_count(api, run_id)
    assert pairs == 12

    code, body = await api.call(
        "DELETE", f"/deep-memory/runs/{run_id}", params={"user_id": str(user_id)}
    )

    assert (code, body) == (200, {"message": "Training run and 12 associated pairs deleted"})
    assert await pair_count(api, run_id) == 0
    async with api.services.db.conn() as conn:
        jobs = await conn.raw.fetchval(
            "SELECT count(*) FROM jobs WHERE run_id = $1", uuid.UUID(run_id)
        )
    assert jobs == 0
    code, _ = await api.call("GET", f"/deep-memory/runs/{run_id}", params={"user_id": str(user_id)})
    assert code == 404
    # the block is lifted
    code, _ = await generate(api, user_id)
    assert code == 202


# train and settings


SPEC_SETTINGS = {
    "enabled",
    "last_trained_at",
    "last_training_run_id",
    "can_enable",
    "total_chunks",
    "trained_chunk_count",
    "has_blocking_run",
    "blocking_run_id",
    "blocking_run_status",
    "is_cloud",
}


async def settings_of(api: Api, user_id: uuid.UUID) -> dict[str, Any]:
    code, body = await api.call("GET", "/deep-memory/settings", params={"user_id": str(user_id)})
    assert code == 200, body
    result: dict[str, Any] = body
    return result


async def test_settings_report_the_blocking_run(api_factory: Any, user_id: uuid.UUID) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen)
    fresh = await settings_of(api, user_id)
    assert set(fresh) == SPEC_SETTINGS | {"trainer", "can_enable_reason"}
    assert fresh == {
        "enabled": False,
        "last_trained_at": None,
        "last_training_run_id": None,
        "can_enable": False,
        "total_chunks": 0,
        "trained_chunk_count": 0,
        "has_blocking_run": False,
        "blocking_run_id": None,
        "blocking_run_status": None,
        "is_cloud": False,
        "trainer": "local",
        "can_enable_reason": None,
    }
    run_id = await run_in_status(api, gen, user_id, "generating")
    blocked = await settings_of(api, user_id)
    assert blocked["has_blocking_run"] is True
    assert blocked["blocking_run_id"] == run_id
    assert blocked["blocking_run_status"] == "generating"
    assert blocked["total_chunks"] == 6
    gen.release()


async def test_is_cloud_only_for_hub_paths(
    api_factory: Any, settings: Any, user_id: uuid.UUID
) -> None:
    import attrs

    cloud = attrs.evolve(
        settings, store=attrs.evolve(settings.store, path="hub://acme/dm_{user_id}")
    )
    api = await api_factory(cloud)
    assert (await settings_of(api, user_id))["is_cloud"] is True


async def test_train_completes_and_updates_settings(api_factory: Any, user_id: uuid.UUID) -> None:
    trainer = ScriptedTrainer()
    api = await api_factory(generator=ControlledGenerator(), trainer=trainer)
    await api.ingest(user_id, 8)
    _, body = await generate(api, user_id, questions_per_chunk=2)
    run_id = body["training_run_id"]
    await api.wait_status(user_id, run_id, "generated")

    code, accepted = await api.call(
        "POST", "/deep-memory/train", json={"user_id": str(user_id), "training_run_id": run_id}
    )
    assert code == 202
    assert accepted["training_run_id"] == run_id
    run = await api.wait_status(user_id, run_id, "completed")
    assert run["completed_at"] is not None

    after = await settings_of(api, user_id)
    assert after["last_training_run_id"] == run_id
    assert after["last_trained_at"] is not None
    assert after["trained_chunk_count"] == 8
    assert after["can_enable"] is True
    assert after["has_blocking_run"] is False

    code, enabled = await api.call(
        "PUT", "/deep-memory/settings", json={"user_id": str(user_id), "enabled": True}
    )
    assert code == 200
    assert enabled["enabled"] is True


async def test_train_refuses_runs_that_are_not_generated(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen)
    run_id = await run_in_status(api, gen, user_id, "generating_failed")
    code, body = await api.call(
        "POST", "/deep-memory/train", json={"user_id": str(user_id), "training_run_id": run_id}
    )
    assert code == 400
    assert body["detail"] == (
        "Training run must be in status generated to train; its status is generating_failed"
    )


async def test_enabling_without_a_model_is_refused(api: Api, user_id: uuid.UUID) -> None:
    code, body = await api.call(
        "PUT", "/deep-memory/settings", json={"user_id": str(user_id), "enabled": True}
    )
    assert code == 409
    assert body["detail"] == "Deep Memory cannot be enabled: no trained model yet"


async def test_model_that_may_not_be_enabled_says_why(api_factory: Any, user_id: uuid.UUID) -> None:
    api = await api_factory(
        generator=ControlledGenerator(), trainer=ScriptedTrainer(can_enable=False)
    )
    await api.ingest(user_id, 5)
    _, body = await generate(api, user_id, auto_train=True)
    await api.wait_status(user_id, body["training_run_id"], "completed")
    current = await settings_of(api, user_id)
    assert current["can_enable"] is False
    assert current["can_enable_reason"] == "It scored worse than no model."
    code, refused = await api.call(
        "PUT", "/deep-memory/settings", json={"user_id": str(user_id), "enabled": True}
    )
    assert code == 409
    assert refused["detail"] == "Deep Memory cannot be enabled. It scored worse than no model."


async def test_runs_are_listed_newest_first(api_factory: Any, user_id: uuid.UUID) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen)
    first = await run_in_status(api, gen, user_id, "completed")
    _, body = await generate(api, user_id)
    await api.wait_status(user_id, body["training_run_id"], "generated")
    code, listing = await api.call("GET", "/deep-memory/runs", params={"user_id": str(user_id)})
    assert code == 200
    assert [r["id"] for r in listing["runs"]] == [body["training_run_id"], first]
    assert listing["runs"][0]["latest_job_id"] == body["job_id"]
