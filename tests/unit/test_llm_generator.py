"""The LLM generator against the local stand-in, its replies sent whole and streamed (as to a
llama-server): every fault retried and recovered, exhausted retries and rejected keys
reported clearly, and the key kept out of every log (a run that fails against it and
proceeds: service/test_llm_runs.py)."""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest
from structlog.testing import capture_logs

from deepmemory_service.llm.client import LLMQuestionGenerator, UpstreamFault, parse_questions
from deepmemory_service.llm.generators import GenerationError
from deepmemory_service.models import Chunk
from deepmemory_service.platform.config import load_settings
from deepmemory_service.platform.retry import retry_after
from deepmemory_service.testing.standin_llm import (
    CONFIG,
    STATS,
    StandinConfig,
    chunk_key,
    create_standin_app,
)

KEY = "sk-test-do-not-log-7f3a"
CHUNK = Chunk(
    1,
    "Advisory locks in PostgreSQL serialise commands for one user across "
    "several service instances, while leases expire when a worker dies.",
)


@pytest.fixture(params=[0, 2], ids=["whole", "streamed"])
async def standin(aiohttp_server: Any, request: Any) -> Any:
    # a server that says its slots is a llama-server, and its calls are streamed
    cfg = StandinConfig(api_key=KEY, slots=request.param)
    return await aiohttp_server(create_standin_app(cfg))


def llm_settings(standin: Any, **changes: Any) -> Any:
    base = load_settings({}).llm
    return attrs.evolve(
        base,
        base_url=str(standin.make_url("/v1")),
        api_key=KEY,
        timeout_s=changes.pop("timeout_s", 2.0),
        backoff_base_s=0.01,
        backoff_max_s=2.0,
        **changes,
    )


async def test_questions_come_back_parsed(standin: Any) -> None:
    gen = LLMQuestionGenerator(llm_settings(standin))
    try:
        questions = await gen.generate(CHUNK, 4)
    finally:
        await gen.aclose()
    assert len(questions) == 4
    assert len(set(questions)) == 4
    assert gen.stats.successes == 1
    assert standin.app[STATS].per_chunk[chunk_key(CHUNK.text)] == 1


@pytest.mark.parametrize(
    "fault", ["429", "500", "hang", "bad_json", "wrong_count", "nul", "surrogate", "long"]
)
async def test_each_fault_is_retried_and_recovered(standin: Any, fault: str) -> None:
    standin.app[CONFIG].schedule = [fault, fault, "ok"]
    standin.app[CONFIG].hang_s = 5
    standin.app[CONFIG].retry_after_s = 0
    gen = LLMQuestionGenerator(llm_settings(standin, timeout_s=0.3))
    try:
        questions = await gen.generate(CHUNK, 3)
    finally:
        await gen.aclose()
    assert len(questions) == 3
    assert gen.stats.retries == 2
    assert standin.app[STATS].faults[fault] == 2
    assert standin.app[STATS].successes == 1


async def test_retry_after_is_honoured(standin: Any) -> None:
    standin.app[CONFIG].schedule = ["429", "ok"]
    standin.app[CONFIG].retry_after_s = 1
    gen = LLMQuestionGenerator(llm_settings(standin))
    started = time.monotonic()
    try:
        await gen.generate(CHUNK, 2)
    finally:
        await gen.aclose()
    assert time.monotonic() - started >= 1.0


async def test_exhausted_retries_name_the_upstream_error(standin: Any) -> None:
    standin.app[CONFIG].fault_rate = 1.0
    standin.app[CONFIG].faults = ("500",)
    gen = LLMQuestionGenerator(llm_settings(standin, max_retries=2))
    with pytest.raises(GenerationError) as info:
        await gen.generate(CHUNK, 2)
    await gen.aclose()
    assert str(info.value) == "LLM call failed after 3 attempts: HTTP 500 from chat/completions"
    assert standin.app[STATS].calls == 3


async def test_a_rejected_key_fails_at_once_without_the_key(standin: Any) -> None:
    gen = LLMQuestionGenerator(attrs.evolve(llm_settings(standin), api_key="sk-wrong-key-123"))
    with pytest.raises(GenerationError) as info:
        await gen.generate(CHUNK, 2)
    await gen.aclose()
    assert str(info.value) == (
        "LLM call failed after 1 attempt: the LLM API rejected the API key (HTTP 401)"
    )
    assert "sk-wrong-key-123" not in str(info.value)


async def test_the_key_never_reaches_logs_or_reprs(standin: Any) -> None:
    standin.app[CONFIG].schedule = ["500", "429", "bad_json", "ok"]
    standin.app[CONFIG].retry_after_s = 0
    settings = llm_settings(standin)
    gen = LLMQuestionGenerator(settings)
    with capture_logs() as logs:
        await gen.generate(CHUNK, 2)
    await gen.aclose()
    # one line per retry (and the slots of a server that says them)
    assert [e["event"] for e in logs if e["event"] != "llm server slots"] == [
        "llm call retried"
    ] * 3
    for text in (repr(logs), repr(settings), repr(gen), repr(standin.app[CONFIG])):
        assert KEY not in text


def test_strict_parsing() -> None:
    assert parse_questions('```json\n{"questions": ["A?", "B?", "A?", " "]}\n```', 2) == [
        "A?",
        "B?",
    ]
    assert parse_questions('{"questions": ["A?", "B?", "C?"]}', 2) == ["A?", "B?"]
    # asked for spares too: as many as came, at least the least
    assert parse_questions('{"questions": ["A?", "B?", "C?"]}', 4, least=2) == ["A?", "B?", "C?"]
    with pytest.raises(UpstreamFault, match="1 usable questions, 4 were asked"):
        parse_questions('{"questions": ["A?"]}', 4, least=2)
    for bad in ("not json", '{"q": []}', '{"questions": ["only one?"]}', "[1, 2]"):
        with pytest.raises(Exception, match="reply"):
            parse_questions(bad, 2)
    assert retry_after("3") == 3.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after("soon") is None
