"""The checks of an LLM's questions in a run, against the LLM stand-in scripted to write
what a small model gets wrong: every question turned down is counted by reason in the run,
the debug view and /metrics; a chunk left short is asked again (an LLM call, counted in the
run's calls) and told why; the run completes; a proceed after a failure checks against the
questions stored before it and makes exactly the calls of the chunks not done (the checks
on their own: unit/test_question_checks.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import attrs
import pytest

from deepmemory_service.llm.client import PROMPT_EXAMPLE
from deepmemory_service.platform.config import Settings
from deepmemory_service.testing.standin_llm import (
    CONFIG,
    STATS,
    StandinConfig,
    chunk_key,
    create_standin_app,
)
from tests.conftest import Api, paragraph

NO_REJECTIONS = {"not_question": 0, "about_text": 0, "copied": 0, "duplicate": 0, "round_trip": 0}


@pytest.fixture
async def standin(aiohttp_server: Any) -> Any:
    return await aiohttp_server(create_standin_app(StandinConfig()))


async def checked_api(api_factory: Any, standin: Any, settings: Settings, **questions: Any) -> Api:
    """A service on the stand-in, one chunk asked at a time (so the scripted answers go to
    the chunks in order), no retries of a failed call."""
    service = attrs.evolve(
        settings,
        generator="llm",
        concurrency=1,
        llm=attrs.evolve(
            settings.llm,
            base_url=str(standin.make_url("/v1")),
            max_retries=0,
            backoff_base_s=0.0,
            timeout_s=5.0,
        ),
        questions=attrs.evolve(settings.questions, **questions),
    )
    api: Api = await api_factory(service)
    return api


async def generate(api: Api, user: uuid.UUID, qpc: int) -> str:
    code, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": qpc}
    )
    assert code == 202, body
    run_id: str = body["training_run_id"]
    return run_id


async def stored_questions(api: Api, run_id: str) -> dict[int, list[str]]:
    async with api.services.db.conn() as conn:
        pairs = await conn.run_pairs(uuid.UUID(run_id))
    by_chunk: dict[int, list[str]] = {}
    for chunk_id, question in pairs:
        by_chunk.setdefault(chunk_id, []).append(question)
    return by_chunk


async def metrics(api: Api) -> str:
    async with api.client.get("/metrics") as resp:
        return await resp.text()


async def test_spare_questions_save_asking_again_and_those_not_kept_stay_free(
    api_factory: Any, standin: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    api = await checked_api(api_factory, standin, settings, round_trip_k=0, reasks=1, spare=2)
    await api.ingest(user_id, 2)
    standin.app[CONFIG].replies = [
        # chunk 1, asked for its 2 and 2 spares: one about the passage, three fine
        [
            "What are the main points of the passage?",
            "How does component0 talk to module0?",
            "Why is component0 split from the others?",
            "How does component1 work with module1?",
        ],
        # chunk 2: the spare chunk 1 did not keep, then its own
        [
            "How does component1 work with module1?",
            "Why does component1 need module1 at all?",
            "Which release first shipped component1?",
            "Who maintains component1 today?",
        ],
    ]
    run_id = await generate(api, user_id, 2)
    run = await api.wait_status(user_id, run_id, "generated")
    await api.idle(user_id)

    stats = standin.app[STATS]
    # each call asked for what the chunk lacked and two more; the question turned down cost
    # no call of its own
    assert stats.asked == [4, 4]
    assert (run["llm_calls"], run["question_reasks"], run["short_chunks"]) == (2, 0, 0)
    assert run["question_rejections"] == {**NO_REJECTIONS, "about_text": 1}
    stored = await stored_questions(api, run_id)
    first, second = sorted(stored)
    # the first that passed are kept; a spare not kept is no chunk's question, so another
    # chunk may keep it
    assert stored[first] == [
        "How does component0 talk to module0?",
        "Why is component0 split from the others?",
    ]
    assert stored[second] == [
        "How does component1 work with module1?",
        "Why does component1 need module1 at all?",
    ]
    # the spares that passed and were not needed: one of chunk 1's, two of chunk 2's
    assert "deepmemory_question_spares_unused_total 3" in await metrics(api)


async def test_bad_questions_are_counted_by_reason_and_their_chunks_asked_again(
    api_factory: Any, standin: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    api = await checked_api(api_factory, standin, settings, round_trip_k=1, reasks=2)
    await api.ingest(user_id, 4)
    # what a small model wrote (the chunks are conftest.paragraph(0..3), asked in order)
    standin.app[CONFIG].replies = [
        # chunk 1: one about the passage itself, one fine: asked again for one
        ["What are the main points of the passage?", "How does component0 talk to module0?"],
        ["Why is component0 split from the others?"],
        # chunk 2: the same as chunk 1's, and a sentence of the chunk made a question
        [
            "How does module0 talk to component0?",
            "Section 1: Server-sent events stream progress to the browser?",
        ],
        # asked again: a statement, and a question that finds another chunk first
        ["Component1 is a component.", "How does component3 talk to module3?"],
    ]
    run_id = await generate(api, user_id, 2)
    run = await api.wait_status(user_id, run_id, "generated")
    await api.idle(user_id)

    assert run["question_rejections"] == {
        **NO_REJECTIONS,
        "about_text": 1,
        "duplicate": 1,
        "copied": 1,
        "not_question": 1,
        "round_trip": 1,
    }
    # chunk 1 asked again once; chunk 2 twice: the stand-in's own questions the second time
    stats = standin.app[STATS]
    assert run["question_reasks"] == stats.reasks == 3
    assert run["llm_calls"] == stats.calls == 4 + 3
    assert run["short_chunks"] == 0
    assert run["pair_count"] == 8
    stored = await stored_questions(api, run_id)
    first, second = sorted(stored)[:2]
    assert stored[first] == [
        "How does component0 talk to module0?",
        "Why is component0 split from the others?",
    ]
    assert len(stored[second]) == 2
    assert not {"Component1 is a component.", "How does module0 talk to component0?"} & set(
        stored[second]
    )
    # the process's counters say the same
    text = await metrics(api)
    assert 'deepmemory_questions_rejected_total{reason="about_text"} 1' in text
    assert 'deepmemory_questions_rejected_total{reason="round_trip"} 1' in text
    assert "deepmemory_question_reasks_total 3" in text
    # and the run's page of the API lists them with the run
    code, listing = await api.call("GET", "/deep-memory/runs", params={"user_id": str(user_id)})
    assert code == 200
    assert listing["runs"][0]["question_rejections"]["about_text"] == 1


async def test_a_chunk_keeps_what_passed_once_the_asking_again_runs_out(
    api_factory: Any, standin: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    api = await checked_api(api_factory, standin, settings, reasks=1)
    await api.ingest(user_id, 3)
    standin.app[CONFIG].replies = [
        # chunk 1: one passes, and asked again the model gets it wrong again
        ["What does the text say about locks?", "How does component0 talk to module0?"],
        ["Locks, mentioned above."],
        # chunk 2: nothing passes twice: it keeps the one turned down by the softest check
        ["What is mentioned?", "Summary"],
        ["What does the author think?", "Tell me more"],
    ]
    run_id = await generate(api, user_id, 2)
    run = await api.wait_status(user_id, run_id, "generated")
    assert run["short_chunks"] == 2
    assert run["question_reasks"] == 2
    assert run["question_rejections"] == {**NO_REJECTIONS, "about_text": 3, "not_question": 3}
    stored = await stored_questions(api, run_id)
    first, second, third = sorted(stored)
    assert stored[first] == ["How does component0 talk to module0?"]
    assert stored[second] == ["What is mentioned?"]
    assert len(stored[third]) == 2
    assert run["pair_count"] == 4
    assert run["generated_chunks"] == 3


async def test_the_debug_view_shows_the_checks_of_the_run_in_progress(
    api_factory: Any, standin: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    api = await checked_api(api_factory, standin, settings, reasks=2)
    await api.ingest(user_id, 3)
    config = standin.app[CONFIG]
    config.replies = [["What is the purpose of the passage?", "Why does component0 exist?"]]
    # chunk 1 and its asking again answer; chunk 2's call hangs until cancelled
    config.schedule = ["ok", "ok", "hang"]
    run_id = await generate(api, user_id, 2)
    deadline = time.monotonic() + 10
    while True:
        (sup,) = (await api.debug())["supervisors"]
        if sup["question_reasks"] == 1 and sup["question_rejections"]:
            break
        assert time.monotonic() < deadline, sup
        await asyncio.sleep(0.02)
    assert sup["current_run_id"] == run_id
    assert sup["question_rejections"] == {"about_text": 1}
    # a cancel keeps what the checks counted with what the run spent
    code, _ = await api.call(
        "POST", "/deep-memory/cancel", json={"user_id": str(user_id), "training_run_id": run_id}
    )
    assert code == 200
    run = await api.wait_status(user_id, run_id, "generating_failed")
    await api.idle(user_id)
    assert run["question_rejections"]["about_text"] == 1
    assert run["question_reasks"] == 1
    assert run["generated_chunks"] == 1


async def test_a_proceed_checks_against_the_stored_questions_and_asks_only_what_is_missing(
    api_factory: Any, standin: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    api = await checked_api(api_factory, standin, settings, reasks=2)
    await api.ingest(user_id, 4)
    config, stats = standin.app[CONFIG], standin.app[STATS]
    # chunk 1 is asked twice and stored; then the server fails every call
    config.replies = [["What is the passage about?"], ["How does component0 work?"]]
    config.fail_after = 2
    run_id = await generate(api, user_id, 1)
    failed = await api.wait_status(user_id, run_id, "generating_failed")
    await api.idle(user_id)
    assert failed["generated_chunks"] == 1
    assert failed["question_rejections"] == {**NO_REJECTIONS, "about_text": 1}
    assert failed["question_reasks"] == 1
    assert failed["llm_calls"] == stats.calls == 3  # two answers and the failed call

    config.fail_after = None
    # chunk 2's first answer repeats chunk 1's stored question (the same key)
    config.replies = [["What is component0 used for?"]]
    successes, per_chunk = stats.successes, dict(stats.per_chunk)
    code, reply = await api.call(
        "POST", "/deep-memory/proceed", json={"user_id": str(user_id), "training_run_id": run_id}
    )
    assert code == 202
    assert reply["message"] == "Resuming generation from chunk 1/4"
    run = await api.wait_status(user_id, run_id, "generated")
    await api.idle(user_id)
    # the three chunks not done, and chunk 2 once more; chunk 1 never again
    assert stats.successes - successes == 3 + 1
    asked = {k: n - per_chunk.get(k, 0) for k, n in stats.per_chunk.items()}
    assert asked[chunk_key(paragraph(0))] == 0
    assert sorted(asked[chunk_key(paragraph(i))] for i in (1, 2, 3)) == [1, 1, 2]
    assert run["question_rejections"] == {**NO_REJECTIONS, "about_text": 1, "duplicate": 1}
    assert run["question_reasks"] == 2
    assert run["llm_calls"] == stats.calls == 3 + 4
    stored = await stored_questions(api, run_id)
    assert len(stored) == 4
    assert stored[min(stored)] == ["How does component0 work?"]
    assert "What is component0 used for?" not in {q for qs in stored.values() for q in qs}


async def test_the_offline_generator_is_not_checked(
    api_factory: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    # its queries are the chunk's own sentences: the checks would turn every one down
    api: Api = await api_factory(settings)
    await api.ingest(user_id, 3)
    run_id = await generate(api, user_id, 2)
    run = await api.wait_status(user_id, run_id, "generated")
    assert run["question_rejections"] == {}
    assert (run["question_reasks"], run["short_chunks"], run["pair_count"]) == (0, 0, 6)


async def test_a_copy_of_the_prompts_example_is_turned_down_as_asked_already(
    api_factory: Any, standin: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    api = await checked_api(api_factory, standin, settings, reasks=1)
    await api.ingest(user_id, 1)
    # a small model pastes the prompt's good example into a chunk it does not fit
    standin.app[CONFIG].replies = [[PROMPT_EXAMPLE.lower()], ["How does component0 work?"]]
    run_id = await generate(api, user_id, 1)
    run = await api.wait_status(user_id, run_id, "generated")
    await api.idle(user_id)
    assert run["question_rejections"] == {**NO_REJECTIONS, "duplicate": 1}
    assert run["question_reasks"] == 1
    assert await stored_questions(api, run_id) == {1: ["How does component0 work?"]}


async def test_a_chunk_that_passed_nothing_keeps_its_own_sentence_before_another_chunks_question(
    api_factory: Any, standin: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    api = await checked_api(api_factory, standin, settings, reasks=1)
    await api.ingest(user_id, 2)
    kept = ["How does component0 talk to module0?", "Why is component0 split from module0?"]
    # chunk 2 repeats chunk 1's question and copies a sentence of its own, twice
    repeat = "How does module0 talk to component0?"
    copy = (
        "Why does item 1 explain detail number 7 about component1 and its interaction with module1?"
    )
    standin.app[CONFIG].replies = [kept, [repeat, copy], [repeat, copy]]
    run_id = await generate(api, user_id, 2)
    run = await api.wait_status(user_id, run_id, "generated")
    await api.idle(user_id)
    assert run["question_rejections"] == {**NO_REJECTIONS, "duplicate": 2, "copied": 2}
    assert run["short_chunks"] == 1
    # the copy still points at its own chunk; the repeat would point one question at two
    assert await stored_questions(api, run_id) == {1: kept, 2: [copy]}
