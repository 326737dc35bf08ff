"""Calls in flight held to the server's slots: against a stand-in that works on two calls at
once and queues the rest (as llama-server does), more workers than slots never time out
waiting in its queue; a server that does not say its slots is not held back. A llama-server's
calls are streamed and time out on silence, not on length, within a bound in all."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import attrs
import pytest
from aiohttp import web

from deepmemory_service.llm import client
from deepmemory_service.llm.client import LLMQuestionGenerator, _StreamedReply
from deepmemory_service.llm.generators import GenerationError
from deepmemory_service.llm.llama_server import root_url
from deepmemory_service.models import Chunk
from deepmemory_service.platform.config import load_settings
from deepmemory_service.testing.standin_llm import CONFIG, STATS, StandinConfig, create_standin_app
from tests.unit.test_llm_generator import KEY, llm_settings

CHUNKS = [Chunk(i, f"Chunk {i} says how slot {i % 3} serves queued requests.") for i in range(8)]


@pytest.fixture
async def slow_server(aiohttp_server: Any) -> Any:
    # 2 slots, 300 ms a call: 8 calls at once take 4 rounds, 1.2 s; the last would wait
    # 0.9 s in the queue, past a 0.6 s timeout counted from when it was sent
    cfg = StandinConfig(api_key=KEY, slots=2, latency_ms=300)
    return await aiohttp_server(create_standin_app(cfg))


async def _generate_all(gen: LLMQuestionGenerator) -> list[list[str] | BaseException]:
    return await asyncio.gather(*(gen.generate(c, 2) for c in CHUNKS), return_exceptions=True)


async def test_calls_past_the_servers_slots_wait_here_and_none_times_out(
    slow_server: Any,
) -> None:
    gen = LLMQuestionGenerator(llm_settings(slow_server, timeout_s=0.6, max_retries=0))
    try:
        results = await _generate_all(gen)
    finally:
        await gen.aclose()
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert gen.in_flight_limit == 2
    assert gen.stats.faults["timeout"] == 0
    stats = slow_server.app[STATS]
    assert (stats.successes, stats.most_working) == (8, 2)


async def test_without_the_gate_the_same_calls_time_out_in_the_queue(slow_server: Any) -> None:
    """What the gate prevents: the server does not say its slots, so calls queue there."""
    slow_server.app[CONFIG].slots = 0  # /props answers 404 ...
    gen = LLMQuestionGenerator(llm_settings(slow_server, timeout_s=0.6, max_retries=0))
    try:
        assert await gen.server.slots(gen._client()) == 0
        slow_server.app[CONFIG].slots = 2  # ... while the server still queues past 2
        results = await _generate_all(gen)
    finally:
        await gen.aclose()
    assert gen.in_flight_limit == 0
    assert gen.stats.faults["timeout"] > 0
    assert any(isinstance(r, BaseException) for r in results)


async def test_a_configured_limit_needs_no_probe(aiohttp_server: Any) -> None:
    server = await aiohttp_server(create_standin_app(StandinConfig(api_key=KEY, latency_ms=500)))
    settings = attrs.evolve(llm_settings(server), max_in_flight=3)
    gen = LLMQuestionGenerator(settings)
    try:
        results = await _generate_all(gen)
    finally:
        await gen.aclose()
    assert all(isinstance(r, list) for r in results)
    assert gen.in_flight_limit == 3
    assert server.app[STATS].most_working == 3


async def test_a_server_that_says_nothing_is_not_held_back(aiohttp_server: Any) -> None:
    server = await aiohttp_server(create_standin_app(StandinConfig(api_key=KEY, latency_ms=500)))
    gen = LLMQuestionGenerator(llm_settings(server))
    try:
        results = await _generate_all(gen)
    finally:
        await gen.aclose()
    assert all(isinstance(r, list) for r in results)
    assert gen.in_flight_limit == 0
    # all 8 at once, but for a machine too busy to start them within the 500 ms a call takes
    assert server.app[STATS].most_working > 3


def test_the_root_of_an_openai_base_url() -> None:
    assert root_url("http://127.0.0.1:8080/v1/") == "http://127.0.0.1:8080"
    assert root_url("http://h/api") == "http://h/api"


async def test_a_call_that_timed_out_gets_longer_next_time(aiohttp_server: Any) -> None:
    """A server slower than `timeout_s` answers late, not never: the next try waits twice
    as long (every try at 0.2 s would time out against 0.3 s answers)."""
    server = await aiohttp_server(create_standin_app(StandinConfig(api_key=KEY, latency_ms=300)))
    gen = LLMQuestionGenerator(llm_settings(server, timeout_s=0.2, max_retries=2))
    try:
        questions = await gen.generate(CHUNKS[0], 2)
    finally:
        await gen.aclose()
    assert len(questions) == 2
    assert gen.stats.faults["timeout"] == 1
    # the answer it got sets the pace: the next call allows twice as long from the start
    assert 0.3 <= gen.slowest_s < 1.0
    assert gen.timeout_for(0) == 2 * gen.slowest_s


def test_timeouts_grow_with_the_slowest_answer_and_stop_at_a_bound() -> None:
    gen = LLMQuestionGenerator(attrs.evolve(load_settings({}).llm, timeout_s=10.0))
    assert [gen.timeout_for(n) for n in range(5)] == [10.0, 20.0, 40.0, 80.0, 80.0]
    gen.slowest_s = 15.0
    assert gen.timeout_for(0) == 30.0
    gen.slowest_s = 1.0  # faster answers never cut it below timeout_s
    assert gen.timeout_for(0) == 10.0


async def test_a_slow_server_that_keeps_sending_is_not_timed_out(aiohttp_server: Any) -> None:
    """A llama-server's calls are streamed: its pings while it reads a prompt, then its
    tokens, show it working, so a call longer than the timeout is not cut off (sent whole,
    a cold CPU server's first calls timed out at 30 s and were made again)."""
    cfg = StandinConfig(api_key=KEY, slots=2, latency_ms=2500)
    server = await aiohttp_server(create_standin_app(cfg))
    gen = LLMQuestionGenerator(llm_settings(server, timeout_s=1.2, max_retries=0))
    started = time.monotonic()
    try:
        questions = await gen.generate(CHUNKS[0], 2)
    finally:
        await gen.aclose()
    assert len(questions) == 2
    assert time.monotonic() - started >= 2.5  # twice the timeout, and more
    assert gen.stats.faults["timeout"] == 0
    # the usage came at the stream's end
    stats = server.app[STATS]
    assert (gen.stats.prompt_tokens, gen.stats.completion_tokens) == (
        stats.prompt_tokens,
        stats.completion_tokens,
    )
    assert stats.completion_tokens > 0


async def test_a_silent_server_times_out_after_the_silence(aiohttp_server: Any) -> None:
    cfg = StandinConfig(api_key=KEY, slots=2, schedule=["hang"], hang_s=30)
    server = await aiohttp_server(create_standin_app(cfg))
    gen = LLMQuestionGenerator(llm_settings(server, timeout_s=0.5, max_retries=0))
    started = time.monotonic()
    try:
        with pytest.raises(GenerationError) as info:
            await gen.generate(CHUNKS[0], 2)
    finally:
        await gen.aclose()
    assert (
        str(info.value) == "LLM call failed after 1 attempt: chat/completions sent nothing for 0.5s"
    )
    assert time.monotonic() - started < 5


async def test_a_server_that_only_pings_is_timed_out_at_the_bound(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pings come from llama-server's HTTP side: a server whose work is stuck still sends
    them, so a streamed call has a bound in all (`MAX_TIMEOUT_FACTOR` times the timeout)."""
    monkeypatch.setattr(client, "MAX_TIMEOUT_FACTOR", 3.0)  # 3.6 s, not 9.6 s, of a test
    cfg = StandinConfig(api_key=KEY, slots=2, latency_ms=30_000)
    server = await aiohttp_server(create_standin_app(cfg))
    # a ping a second (llama-server's least), within the 1.2 s of silence allowed
    gen = LLMQuestionGenerator(llm_settings(server, timeout_s=1.2, max_retries=0))
    try:
        with pytest.raises(GenerationError) as info:
            await gen.generate(CHUNKS[0], 2)
    finally:
        await gen.aclose()
    assert str(info.value) == (
        "LLM call failed after 1 attempt: chat/completions took longer than 3.6s"
    )


def test_a_streamed_reply_is_put_back_together() -> None:
    reply = _StreamedReply()
    lines = [
        b": ping\n",
        b"\n",
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}\n',
        b'data: {"choices":[{"index":0,"delta":{"content":"{\\"questions\\": "}}]}\n',
        b'data: {"choices":[{"index":0,"delta":{"content":"[\\"A?\\"]}"}}]}\n',
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}\n',
    ]
    assert all(reply.take(line) for line in lines)
    assert not reply.ended
    assert not reply.take(b"data: [DONE]\n")
    assert reply.ended
    assert reply.as_json() == {
        "choices": [{"message": {"content": '{"questions": ["A?"]}'}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4},
    }
    # an error after the headers is a server error; an event that is not JSON, no completion
    failed = _StreamedReply()
    assert not failed.take(b'data: {"error": {"message": "context full", "code": 500}}\n')
    assert (failed.status, failed.as_json()) == (
        500,
        {"error": {"message": "context full", "code": 500}},
    )
    garbled = _StreamedReply()
    assert garbled.take(b"data: {not json\n")
    assert garbled.take(b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}\n')
    assert garbled.as_json() == {"usage": {"prompt_tokens": 9, "completion_tokens": 4}}


async def test_a_stream_cut_off_mid_answer_is_a_connection_fault(aiohttp_server: Any) -> None:
    """A llama-server whose connection closes after part of its answer: the call failed at
    the transport (tried again as such), not a reply that is not JSON."""
    calls = 0

    async def props(request: web.Request) -> web.Response:
        return web.json_response({"total_slots": 2})

    async def chat(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        await stream.write(b'data: {"choices":[{"index":0,"delta":{"content":"{\\"quest"}}]}\n\n')
        assert request.transport is not None
        request.transport.close()
        return stream

    app = web.Application()
    app.router.add_get("/props", props)
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    gen = LLMQuestionGenerator(llm_settings(server, max_retries=1))
    try:
        with pytest.raises(GenerationError) as info:
            await gen.generate(CHUNKS[0], 2)
    finally:
        await gen.aclose()
    assert calls == 2
    assert dict(gen.stats.faults) == {"connection": 2}
    assert "cannot reach the LLM API (ClientPayloadError)" in str(info.value)
