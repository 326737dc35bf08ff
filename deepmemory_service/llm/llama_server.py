"""What an OpenAI-compatible server says about itself where it says it: llama.cpp's
`llama-server` answers, beside `/v1`, `GET /props` (its `total_slots`: the requests it
works on at once; more wait in its queue) and `POST /apply-template` + `POST /tokenize`
(a chat's prompt exactly as the model sees it, in the model's own tokens).

A provider that has none of these (OpenAI, most proxies) answers 404 or something that is
not such a reply: that is remembered, and the callers fall back (no gate on calls in
flight, a token estimate from the prompt's length). A server that cannot be reached is
asked again next time (it may be starting).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import attrs
import structlog

log = structlog.get_logger(__name__)

# a server that does not answer this fast is asked again next time; its calls are not held up
PROBE_TIMEOUT_S = 5.0


def root_url(base_url: str) -> str:
    """The server's root from its OpenAI base URL (`http://h:p/v1` → `http://h:p`)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


@attrs.define(eq=False)
class LlamaServer:
    """One server's own endpoints, asked through the generator's connection pool."""

    base_url: str
    headers: dict[str, str] = attrs.field(factory=dict, repr=False)
    # None: not asked yet (or unreachable last time); 0: the server does not say
    _slots: int | None = None
    _slots_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    # False once the server showed it has no tokenizer endpoints
    _tokenizes: bool = True

    @property
    def root(self) -> str:
        return root_url(self.base_url)

    async def _request(
        self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        """(status, JSON body or None); raises OSError-like `aiohttp.ClientError` or
        `TimeoutError` when the server cannot be reached."""
        async with (
            asyncio.timeout(PROBE_TIMEOUT_S),
            session.request(method, self.root + path, json=body, headers=self.headers) as resp,
        ):
            raw = await resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, None

    async def slots(self, session: aiohttp.ClientSession) -> int:
        """The requests the server works on at once (`total_slots`); 0 when it does not say."""
        if self._slots is not None:
            return self._slots
        async with self._slots_lock:
            if self._slots is not None:
                return self._slots
            try:
                status, body = await self._request(session, "GET", "/props")
            except (aiohttp.ClientError, TimeoutError):
                return 0  # unreachable now: its calls will say so; ask again next time
            slots = body.get("total_slots") if status == 200 and isinstance(body, dict) else None
            self._slots = slots if isinstance(slots, int) and slots > 0 else 0
            if self._slots:
                log.info("llm server slots", slots=self._slots)
            return self._slots

    async def count_chat(
        self, session: aiohttp.ClientSession, messages: list[dict[str, str]]
    ) -> int | None:
        """The prompt tokens of a chat as the model sees it (its chat template applied), or
        None when the server cannot say."""
        if not self._tokenizes:
            return None
        try:
            status, body = await self._request(
                session, "POST", "/apply-template", {"messages": messages}
            )
            prompt = body.get("prompt") if status == 200 and isinstance(body, dict) else None
            if not isinstance(prompt, str):
                self._tokenizes = False
                return None
            return await self._tokens(session, prompt, special=True)
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def count_text(self, session: aiohttp.ClientSession, text: str) -> int | None:
        """The tokens of a piece of text, or None when the server cannot say."""
        if not self._tokenizes:
            return None
        try:
            return await self._tokens(session, text, special=False)
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _tokens(
        self, session: aiohttp.ClientSession, text: str, *, special: bool
    ) -> int | None:
        status, body = await self._request(
            session, "POST", "/tokenize", {"content": text, "add_special": special}
        )
        tokens = body.get("tokens") if status == 200 and isinstance(body, dict) else None
        if not isinstance(tokens, list):
            self._tokenizes = False
            return None
        return len(tokens)
