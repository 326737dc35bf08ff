"""The LLM question generator: an OpenAI-compatible chat-completions client.

One shared connection pool; a per-call timeout; retries under the service's retry policy
(exponential backoff, full jitter, `Retry-After` on 429/503 honoured); strict parsing of
the reply (a reply that is not exactly the questions asked for is a retryable fault, never
a silent empty pair).
The API key goes only into the Authorization header: never into logs, reprs or messages.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from typing import Any

import aiohttp
import attrs
import structlog

from deepmemory_service.llm.generators import GenerationError
from deepmemory_service.llm.rate_budget import Grant, Lane
from deepmemory_service.llm.usage import Usage
from deepmemory_service.models import Chunk, question_problem
from deepmemory_service.platform.config import LLMSettings
from deepmemory_service.platform.retry import RetryPolicy, retry, retry_after

log = structlog.get_logger(__name__)

SYSTEM_PROMPT = (
    "You write search questions for a retrieval system. Given a passage, write questions "
    "that the passage answers. Rules: every question must be answerable from the passage "
    "alone; be specific and self-contained: name the subject instead of saying 'the "
    "passage', 'the text' or 'according to'; phrase each question the way a person would "
    "type it into a search box; make the questions differ from each other; never include "
    'the answer. Reply with JSON only: {"questions": ["...", "..."]}.'
)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)


@attrs.define
class LLMStats:
    calls: int = 0
    successes: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    faults: Counter[str] = attrs.field(factory=Counter)


@attrs.frozen
class UpstreamFault(Exception):
    """One failed call: what kind, in words, whether another try may succeed."""

    kind: str
    message: str
    retryable: bool
    retry_after_s: float | None = None


def user_prompt(chunk: Chunk, count: int) -> str:
    return (
        f'Write exactly {count} questions about this passage.\n\nPassage:\n"""\n{chunk.text}\n"""'
    )


def _error_code(reply: object) -> object:
    """The `error.code` of an OpenAI-style error body (`insufficient_quota`, say)."""
    error = reply.get("error") if isinstance(reply, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def parse_questions(content: str, count: int) -> list[str]:
    """Exactly `count` distinct, non-empty questions from the model's reply, or a fault."""
    text = _FENCE.sub("", content.strip())
    try:
        data = json.loads(text)
    except ValueError:
        raise UpstreamFault("bad_reply", "the reply is not valid JSON", True) from None
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        raise UpstreamFault("bad_reply", 'the reply has no "questions" list', True)
    seen: list[str] = []
    refused: list[str] = []
    for q in questions:
        if not isinstance(q, str) or not q.strip():
            continue
        problem = question_problem(q.strip())
        if problem is not None:
            refused.append(problem)
        elif q.strip() not in seen:
            seen.append(q.strip())
    if len(seen) < count:
        why = f" ({len(refused)} refused: {refused[0]})" if refused else ""
        raise UpstreamFault(
            "wrong_count",
            f"the reply has {len(seen)} usable questions, {count} were asked{why}",
            True,
        )
    return seen[:count]


class LLMQuestionGenerator:
    name = "llm"

    def __init__(
        self,
        settings: LLMSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.stats = LLMStats()
        self._session = session
        self._owns_session = session is None
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not secrets
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self.policy = RetryPolicy(
            attempts=settings.max_retries + 1,
            base_s=settings.backoff_base_s,
            max_s=settings.backoff_max_s,
        )

    def __repr__(self) -> str:
        return f"<LLMQuestionGenerator model={self.settings.model} url={self._url}>"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # one pool for every worker; no per-host cap below the configured concurrency
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def generate(self, chunk: Chunk, count: int, lane: Lane | None = None) -> list[str]:
        tries = 0

        async def attempt() -> list[str]:
            nonlocal tries
            tries += 1
            try:
                return await self._call(chunk, count, lane)
            except UpstreamFault as fault:
                self.stats.faults[fault.kind] += 1
                raise

        def pause(exc: BaseException, attempt: int) -> float:
            if not isinstance(exc, UpstreamFault):
                return self.policy.delay(attempt, rng=self._rng)
            if exc.kind == "rate_limited" and lane is not None and lane.limited:
                return 0.0  # the shared budget has slowed down and paused: it does the waiting
            return self.policy.delay(attempt, exc.retry_after_s, self._rng)

        def logged(exc: BaseException, attempt: int, delay: float) -> None:
            self.stats.retries += 1
            kind = exc.kind if isinstance(exc, UpstreamFault) else type(exc).__name__
            log.info(
                "llm call retried",
                kind=kind,
                attempt=attempt + 1,
                delay_s=round(delay, 3),
                chunk_id=chunk.id,
            )

        try:
            questions = await retry(
                attempt,
                self.policy,
                retry_on=lambda exc: isinstance(exc, UpstreamFault) and exc.retryable,
                pause=pause,
                on_retry=logged,
            )
        except UpstreamFault as fault:
            times = f"after {tries} attempt{'s' if tries > 1 else ''}"
            raise GenerationError(f"LLM call failed {times}: {fault.message}") from None
        self.stats.successes += 1
        return questions

    async def _call(self, chunk: Chunk, count: int, lane: Lane | None) -> list[str]:
        prompt = user_prompt(chunk, count)
        grant = await lane.acquire(len(SYSTEM_PROMPT) + len(prompt), count) if lane else None
        self.stats.calls += 1
        payload: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt},
            ],
            "temperature": 0.3,
            "response_format": {"type": "json_object"},
        }
        headers = (
            {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        )
        timeout = self.settings.timeout_s
        try:
            async with (
                asyncio.timeout(timeout),
                self._client().post(self._url, json=payload, headers=headers) as resp,
            ):
                status = resp.status
                body = await resp.read()
                wait = retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            self._answered(lane, grant, None, ok=False)
            raise UpstreamFault(
                "timeout", f"chat/completions timed out after {timeout:g}s", True
            ) from None
        except asyncio.CancelledError:
            # a cancel or a shutdown cut the call off: it was paid for all the same
            if lane is not None and grant is not None:
                lane.cut_off(grant)
            raise
        except aiohttp.ClientError as exc:
            self._answered(lane, grant, None, ok=False)
            raise UpstreamFault(
                "connection", f"cannot reach the LLM API ({type(exc).__name__})", True
            ) from None
        try:
            reply = json.loads(body)
        except ValueError:
            reply = None
        if status in (429, 503):
            if _error_code(reply) == "insufficient_quota":
                self._answered(lane, grant, None, ok=False)
                raise UpstreamFault(
                    "no_quota",
                    "the LLM API key has no quota left (HTTP 429 insufficient_quota): "
                    "check the account's plan and billing",
                    False,
                )
            if lane is not None and grant is not None:
                lane.rate_limited(grant, wait)
            raise UpstreamFault("rate_limited", f"HTTP {status} from chat/completions", True, wait)
        usage = Usage.from_reply(reply)
        self._answered(lane, grant, usage, ok=status < 400)
        if status >= 500:
            raise UpstreamFault("server_error", f"HTTP {status} from chat/completions", True)
        if status == 401:
            raise UpstreamFault(
                "unauthorized", "the LLM API rejected the API key (HTTP 401)", False
            )
        if status >= 400:
            raise UpstreamFault("client_error", f"HTTP {status} from chat/completions", False)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise UpstreamFault(
                "bad_reply", "the response is not a chat completion", True
            ) from None
        if not isinstance(content, str):
            raise UpstreamFault("bad_reply", "the completion has no text content", True)
        return parse_questions(content, count)

    def _answered(
        self, lane: Lane | None, grant: Grant | None, usage: Usage | None, *, ok: bool
    ) -> None:
        """Counts a call that reached the provider (or may have: a timeout is billed too)."""
        if usage is not None:
            self.stats.prompt_tokens += usage.prompt_tokens
            self.stats.completion_tokens += usage.completion_tokens
        if lane is not None and grant is not None:
            lane.settle(grant, usage, ok=ok)

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
