"""Incremental generation: a new run copies the questions of the user's latest completed run
for every chunk whose text it covered and asks the generator only for the others; the
estimate says so beforehand; the spec's messages keep their meaning."""

from __future__ import annotations

import uuid
from typing import Any

from deepmemory_service.gateway.auth import mint_token
from deepmemory_service.testing.fakes import ControlledGenerator, ScriptedTrainer
from tests.conftest import Api, paragraph, read_stream
from tests.service.test_gateway import gw


async def generate(api: Api, user: uuid.UUID, **extra: Any) -> dict[str, Any]:
    code, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), **extra}
    )
    assert code == 202, body
    return dict(body)


async def completed_run(api: Api, user: uuid.UUID, **extra: Any) -> str:
    """A run of the user's chunks, generated and trained: the source of the next reuse."""
    run_id = (await generate(api, user, **extra))["training_run_id"]
    await api.wait_status(user, run_id, "generated")
    await api.idle(user)
    code, body = await api.call(
        "POST", "/deep-memory/train", json={"user_id": str(user), "training_run_id": run_id}
    )
    assert code == 202, body
    await api.wait_status(user, run_id, "completed")
    await api.idle(user)
    return run_id


async def add_documents(api: Api, user: uuid.UUID, texts: list[str]) -> None:
    docs = [{"title": f"added {i}", "text": t} for i, t in enumerate(texts)]
    code, body = await api.call(
        "POST", "/documents", json={"user_id": str(user), "documents": docs}
    )
    assert code == 201, body


async def chunk_ids(api: Api, user: uuid.UUID) -> list[int]:
    async with api.services.db.conn() as conn:
        rows = await conn.raw.fetch("SELECT id FROM chunks WHERE user_id = $1 ORDER BY id", user)
    return [r["id"] for r in rows]


async def questions(api: Api, run_id: str) -> dict[int, list[str]]:
    """The run's questions by chunk id."""
    async with api.services.db.conn() as conn:
        rows = await conn.raw.fetch(
            "SELECT chunk_id, question FROM training_pairs WHERE run_id = $1 "
            "ORDER BY chunk_id, question_index",
            uuid.UUID(run_id),
        )
    out: dict[int, list[str]] = {}
    for row in rows:
        out.setdefault(row["chunk_id"], []).append(row["question"])
    return out


async def estimate(api: Api, user: uuid.UUID, **params: str) -> dict[str, Any]:
    code, body = await api.call(
        "GET", "/deep-memory/estimate", params={"user_id": str(user), **params}
    )
    assert code == 200, body
    return dict(body)


async def test_a_new_run_asks_only_for_new_chunks_and_reuses_the_rest(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen, trainer=ScriptedTrainer())
    await api.ingest(user_id, 21)
    first = await completed_run(api, user_id, questions_per_chunk=2)
    old_ids = await chunk_ids(api, user_id)
    before = await questions(api, first)

    # 42 new chunks, one of them with the text of an old chunk (the same text, re-added)
    await add_documents(api, user_id, [*(paragraph(100 + i) for i in range(41)), paragraph(0)])
    ids = await chunk_ids(api, user_id)
    new_ids = [i for i in ids if i not in old_ids]
    assert len(new_ids) == 42
    ahead = await estimate(api, user_id, questions_per_chunk="2")
    assert ahead["total_chunks"] == 63
    assert ahead["reusable_chunks"] == 22
    assert ahead["chunks_to_generate"] == 41
    assert ahead["reuse_from_run_id"] == first

    gen.calls.clear()
    accepted = await generate(api, user_id, questions_per_chunk=2)
    events = await read_stream(api, user_id, accepted["job_id"])
    run = await api.wait_status(user_id, accepted["training_run_id"], "generated")

    # the generator was asked about the 41 chunks whose text is new, once each
    assert sorted(gen.calls) == sorted(new_ids[:-1])
    assert set(gen.calls.values()) == {1}
    assert (run["total_chunks"], run["generated_chunks"], run["pair_count"]) == (63, 63, 126)
    assert (run["reused_chunks"], run["new_chunks"]) == (22, 41)
    assert run["reused_from_run_id"] == first
    # the copied questions are the first run's, word for word; the first run is untouched
    after = await questions(api, run["id"])
    assert all(after[chunk] == qs for chunk, qs in before.items())
    assert after[new_ids[-1]] == before[old_ids[0]]  # the same text, the same questions
    assert await questions(api, first) == before
    started = next(e for e in events if e.event == "status")
    assert started.data["message"] == (
        "Reused the questions of 22/63 chunks from the last trained run; generating "
        "questions for the other 41"
    )
    assert started.data["reused_chunks"] == 22
    assert events[-1].event == "done"
    assert events[-1].data["reused_chunks"] == 22
    progress = [e for e in events if e.event == "progress"]
    assert progress[-1].data["message"] == (
        "Generated questions for 63/63 chunks (22 reused from the last trained run)"
    )


async def test_regenerate_asks_for_every_chunk(api_factory: Any, user_id: uuid.UUID) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen, trainer=ScriptedTrainer())
    await api.ingest(user_id, 12)
    await completed_run(api, user_id)
    ahead = await estimate(api, user_id, regenerate="true")
    assert (ahead["reusable_chunks"], ahead["chunks_to_generate"]) == (0, 12)
    assert ahead["reuse_from_run_id"] is None
    gen.calls.clear()
    run_id = (await generate(api, user_id, regenerate=True))["training_run_id"]
    run = await api.wait_status(user_id, run_id, "generated")
    assert len(gen.calls) == 12
    assert (run["reused_chunks"], run["new_chunks"], run["reused_from_run_id"]) == (0, 12, None)


async def test_more_questions_than_the_last_run_asked_reuse_nothing(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    gen = ControlledGenerator()
    api = await api_factory(generator=gen, trainer=ScriptedTrainer())
    await api.ingest(user_id, 8)
    await completed_run(api, user_id, questions_per_chunk=2)
    assert (await estimate(api, user_id, questions_per_chunk="3"))["reusable_chunks"] == 0
    fewer = await estimate(api, user_id, questions_per_chunk="1")
    assert fewer["reusable_chunks"] == 8
    gen.calls.clear()
    run_id = (await generate(api, user_id, questions_per_chunk=1))["training_run_id"]
    run = await api.wait_status(user_id, run_id, "generated")
    assert not gen.calls
    assert (run["reused_chunks"], run["pair_count"]) == (8, 8)


async def test_resume_and_delete_count_reused_chunks_as_the_runs_own(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    """N in 'Resuming generation from chunk N/M' counts the covered chunks, reused ones
    included; delete removes the run's own pairs (copies included) and never the source's."""
    gen = ControlledGenerator()
    api = await api_factory(generator=gen, trainer=ScriptedTrainer())
    await api.ingest(user_id, 10)
    first = await completed_run(api, user_id, questions_per_chunk=2)
    await add_documents(api, user_id, [paragraph(100 + i) for i in range(10)])
    gen.fail_after = gen.total_calls + 3
    run_id = (await generate(api, user_id, questions_per_chunk=2))["training_run_id"]
    failed = await api.wait_status(user_id, run_id, "generating_failed")
    await api.idle(user_id)
    covered = failed["generated_chunks"]
    assert failed["reused_chunks"] == 10
    assert 10 <= covered < 20

    gen.fail_after = None
    code, body = await api.call(
        "POST", "/deep-memory/proceed", json={"user_id": str(user_id), "training_run_id": run_id}
    )
    assert code == 202
    assert body["message"] == f"Resuming generation from chunk {covered}/20"
    await api.wait_status(user_id, run_id, "generated")
    await api.idle(user_id)

    async with api.services.db.conn() as conn:
        await conn.raw.execute(
            "UPDATE training_runs SET status = 'generating_failed' WHERE id = $1",
            uuid.UUID(run_id),
        )
        source_pairs = await conn.count_pairs(uuid.UUID(first))
    code, body = await api.call(
        "DELETE", f"/deep-memory/runs/{run_id}", params={"user_id": str(user_id)}
    )
    assert (code, body) == (200, {"message": "Training run and 40 associated pairs deleted"})
    async with api.services.db.conn() as conn:
        assert await conn.count_pairs(uuid.UUID(first)) == source_pairs == 20


async def test_the_estimate_through_the_gateway(api_factory: Any, user_id: uuid.UUID) -> None:
    api = await api_factory(generator=ControlledGenerator(), trainer=ScriptedTrainer())
    await api.ingest(user_id, 5)
    token = mint_token(api.services.settings, user_id, 600)
    code, body = await gw(api, "GET", f"/api/deep-memory/estimate?user_id={uuid.uuid4()}", token)
    assert code == 200, body
    assert body["total_chunks"] == 5  # the identity's chunks, whatever user_id was sent
    assert body["chunks_to_generate"] == 5
    code, body = await gw(api, "GET", "/api/deep-memory/estimate?questions_per_chunk=99", token)
    assert code == 422
    assert body == {"detail": "questions_per_chunk: must be between 1 and 10, got 99"}
