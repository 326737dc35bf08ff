"""A real model for the real-LLM tests: llama.cpp's `llama-server` with a small GGUF model
(`deepmemory_service.testing.local_llm`: built and downloaded once, cached), or the one at
`DEEPMEMORY_TEST_LLM_URL` (its OpenAI base URL; `.ci/run` prepares one and passes it), and
a proxy in front of it that counts the calls per chunk and drops connections on demand.

These tests are not part of the default run (`-m "not real_llm"` in setup.cfg): run them
with `pytest -m real_llm tests/real_llm`."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from deepmemory_service.testing import local_llm
from deepmemory_service.testing.client import free_port


@attrs.frozen
class RealLLM:
    base_url: str
    model: str


@pytest.fixture(scope="session")
def real_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealLLM]:
    model = os.environ.get("DEEPMEMORY_TEST_LLM_MODEL", local_llm.DEFAULT_MODEL)
    configured = os.environ.get("DEEPMEMORY_TEST_LLM_URL")
    if configured:
        yield RealLLM(configured, model)
        return
    root = local_llm.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    with local_llm.running(root, model=model, port=free_port(), log_path=Path(log)) as server:
        yield RealLLM(server.base_url, model)


@attrs.define
class Proxy:
    """Forwards every request to the real server; records the user message of each chat
    call it forwarded and, for each reply, the user message and the reply's `usage`; with
    `drop` set, closes the connection of every chat call without an answer (and without
    forwarding it)."""

    target: str
    drop: bool = False
    dropped: int = 0
    forwarded: list[str] = attrs.field(factory=list)
    answered: list[str] = attrs.field(factory=list)
    # (prompt, completion) tokens of each answered call, in the order of `answered`
    usages: list[tuple[int, int]] = attrs.field(factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # after this many answered chat calls, `drop` turns itself on
    drop_after: int | None = None
    # chat calls at the server now, and at most at once
    in_flight: int = 0
    most_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        chat = request.path.endswith("/chat/completions")
        if chat and self.drop:
            self.dropped += 1
            assert request.transport is not None
            request.transport.close()  # the connection drops: no status, no body
            raise web.HTTPInternalServerError  # never sent: the transport is gone
        user_message = ""
        if chat:
            sent = await request.json()
            user_message = sent["messages"][-1]["content"]
            self.forwarded.append(user_message)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization",)}
        session: aiohttp.ClientSession = request.app[SESSION]
        self.in_flight += chat
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            async with session.request(
                request.method,
                self.target + request.path_qs,
                data=body,
                headers={**headers, "Content-Type": request.content_type},
            ) as upstream:
                if upstream.content_type == "text/event-stream":
                    # a streamed reply goes on as it comes (pings, tokens); its usage is in
                    # its last event
                    response = web.StreamResponse(
                        status=upstream.status, headers={"Content-Type": "text/event-stream"}
                    )
                    await response.prepare(request)
                    usage: dict[str, int] = {}
                    async for line in upstream.content:
                        if line.startswith(b"data: {"):
                            usage = json.loads(line[len(b"data: ") :]).get("usage") or usage
                        elif line.startswith(b"data: [DONE]") and chat and upstream.status == 200:
                            # counted before the client can see the end (and close)
                            self._answered(user_message, usage)
                        await response.write(line)
                    await response.write_eof()
                    return response
                reply = await upstream.read()
        finally:
            self.in_flight -= chat
        if chat and upstream.status == 200:
            self._answered(user_message, json.loads(reply).get("usage", {}))
        return web.Response(body=reply, status=upstream.status, content_type=upstream.content_type)

    def _answered(self, user_message: str, usage: dict[str, int]) -> None:
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.answered.append(user_message)
        self.usages.append((prompt, completion))
        if self.drop_after is not None and len(self.answered) >= self.drop_after:
            self.drop, self.drop_after = True, None


SESSION = web.AppKey("proxy_session", aiohttp.ClientSession)


@pytest.fixture
async def proxy(real_llm: RealLLM, aiohttp_server: Any) -> tuple[Proxy, str]:
    """(the proxy, its OpenAI base URL)."""
    root = real_llm.base_url.rstrip("/").removesuffix("/v1")
    state = Proxy(root)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", state.handle)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
            app[SESSION] = s
            yield

    app.cleanup_ctx.append(session_ctx)
    # a client that gives up on a call (its timeout) closes the connection: the test server
    # cancels the handler, and the call to the server with it, as without the proxy
    server = await aiohttp_server(app)
    return state, str(server.make_url("/v1"))
