"""The LLM question generator: an OpenAI-compatible chat-completions client.

One shared connection pool; at most as many calls in flight as the server works on at once
(`max_in_flight`, or the slots a llama-server reports), so that a call's timeout counts
from when the server takes it up, not from when it joined the server's queue. A call to a
llama-server is streamed and times out on silence, not on length: the server pings while
it reads a prompt and sends its answer token by token, so however slowly a CPU server
works, a call is cut off only after `timeout_s` without a byte, or at `MAX_TIMEOUT_FACTOR`
times `timeout_s` in all. Other servers answer whole, with a per-call timeout that adapts
to their pace (twice the slowest recent answer when that is longer than `timeout_s`, and
doubled for each try of a call that timed out, up to `MAX_TIMEOUT_FACTOR` times
`timeout_s`: a slow server answers late, not never). Retries follow the service's retry
policy (exponential backoff, full jitter, `Retry-After` on 429/503 honoured); the reply is
parsed strictly (a reply that is not exactly the questions asked for is a retryable fault,
never a silent empty pair).
The API key goes only into the Authorization header: never into logs, reprs or messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import structlog

from deepmemory_service.llm.generators import GenerationError
from deepmemory_service.llm.llama_server import LlamaServer
from deepmemory_service.llm.question_checks import ADVICE, Feedback, Reason
from deepmemory_service.llm.rate_budget import Grant, Lane
from deepmemory_service.llm.usage import Usage
from deepmemory_service.models import Chunk, question_problem
from deepmemory_service.platform.config import LLMSettings
from deepmemory_service.platform.retry import RetryPolicy, retry, retry_after

log = structlog.get_logger(__name__)

# The prompt. A 1.5B model mirrors its prompt's words: told about "this passage", it asked
# "What does the passage say about …?" however often the rules forbade it (22 of 164
# questions for 41 chunks); a prompt that never names the text and shows one worked example,
# as an earlier turn of the chat, took that to none in two runs, and its questions are
# shorter, like people's (docs/performance.md, "The prompt").
SYSTEM_PROMPT = (
    "You write the questions people type into a search box to find documentation. The user "
    "gives you a piece of it; write questions that it answers, as a person would type them "
    "who has never seen it. Rules: each question is short (at most 15 words) and names its "
    "subject (the program, command, option, law or idea); it asks about what is particular "
    "to this piece, not what anything on the subject would answer; it is in your own words, "
    "not a sentence of the piece; the questions differ from each other; never include the "
    "answer. Never refer to the piece itself: no 'the passage', 'the text', 'the document', "
    "'this section', 'the author', 'mentioned', 'according to'. "
    "Good: 'How do I resume a failed download with curl?'. Bad: 'What does the passage say "
    "about resuming?'. "
    'Reply with JSON only: {"questions": ["...", "..."]}.'
)
# the worked example: a piece of documentation and the questions it should get, as many as
# the call asks for (shown 3 when asked for 4, the model wrote 3 or fewer in 6 of 82 answers)
EXAMPLE_TEXT = (
    "To continue a download that was interrupted, give curl the option -C - (a dash) "
    "together with the same URL and -o name: curl then asks the server for the rest of the "
    "file, starting where the local file ends. The server must support byte ranges; an FTP "
    "server needs the REST command."
)
EXAMPLE_QUESTIONS = (
    "How do I resume a failed download with curl?",
    "What does curl -C - do?",
    "Does curl resume downloads from FTP servers?",
    "How does curl know where to restart a broken transfer?",
    "Which servers let curl continue a partial download?",
)
PROMPT_EXAMPLE = EXAMPLE_QUESTIONS[0]
# sampling: a first call's questions close to the prompt's example; a call asking again
# hotter, away from the questions it wrote before (asking again at 0.3, the 1.5B model
# wrote them again, 25 of 40 kept; at 0.8, 32)
FIRST_TEMPERATURE = 0.3
REASK_TEMPERATURE = 0.8
# the longest a call's timeout grows to, as a multiple of `timeout_s`
MAX_TIMEOUT_FACTOR = 8.0
# how fast the slowest recent answer is forgotten: each answer scales it by this first
SLOWEST_DECAY = 0.9
# a streamed call's pings a silence timeout: a working server is heard from this often
PINGS_PER_SILENCE = 3
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


# the user prompt as its reader (`read_user_prompt`) finds it again: greedy to the last
# fence, since what follows it (the advice of asking again) never holds one
_ASKED = re.compile(
    r'^Write exactly (\d+) search questions? that this answers:\n"""\n(.*)\n"""', re.DOTALL
)
TURNED_DOWN_HEADING = "Earlier questions were turned down:"
ASK_ELSEWHERE = "Ask about something else in it than who, what or why it is in general."


@attrs.frozen
class AskedPrompt:
    """What a user prompt asks: how many questions of which text, and when it asks again,
    what follows the text (why earlier questions were turned down)."""

    count: int
    text: str
    feedback: str

    @property
    def asking_again(self) -> bool:
        return TURNED_DOWN_HEADING in self.feedback


def read_user_prompt(message: str) -> AskedPrompt | None:
    """The inverse of `user_prompt`, for the stand-in server and the real-model stage: one
    reader of the format, beside its writer. None for a message `user_prompt` did not write."""
    found = _ASKED.match(message)
    if found is None:
        return None
    return AskedPrompt(int(found[1]), found[2], message[found.end() :])


def user_prompt(chunk: Chunk, count: int, feedback: Feedback | None = None) -> str:
    """The user message: the chunk and how many questions; when the chunk is asked again,
    why its earlier questions were turned down, in the reasons' advice, never the questions
    themselves: shown them, Qwen2.5-Coder-1.5B wrote them again (26 of the 40 questions of 15
    calls asking again; 8 of them kept), and told only why, it wrote new ones (25 kept, 32
    sampled hotter: docs/performance.md, "Asking again")."""
    plural = "question" if count == 1 else "questions"
    prompt = f'Write exactly {count} search {plural} that this answers:\n"""\n{chunk.text}\n"""'
    if feedback is None:
        return prompt
    reasons = sorted({r.reason for r in feedback.turned_down}, key=list(Reason).index)
    return "\n".join(
        [prompt, "", TURNED_DOWN_HEADING, *(f"- {ADVICE[r]}" for r in reasons), ASK_ELSEWHERE]
    )


def reply_tokens(count: int) -> int:
    """The most tokens a reply of `count` questions may take. A small model in JSON mode can
    loop (the same question again and again) until its context is full: minutes of a CPU
    server, and a timeout. A question the prompt asks for takes about 14 tokens (its JSON
    included); a reply cut short is bad JSON, asked again like any other."""
    return 48 + 48 * count


def chat_messages(
    chunk: Chunk, count: int, feedback: Feedback | None = None
) -> list[dict[str, str]]:
    """The messages one call sends for `chunk` (what the estimate counts, too): the rules,
    the worked example as an earlier exchange asking for as many questions, and the chunk.
    The example comes first so that a server that caches prompts (llama-server's slots)
    reuses it."""
    shown = EXAMPLE_QUESTIONS[: max(1, min(count, len(EXAMPLE_QUESTIONS)))]
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(Chunk(0, EXAMPLE_TEXT), len(shown))},
        {"role": "assistant", "content": json.dumps({"questions": list(shown)})},
        {"role": "user", "content": user_prompt(chunk, count, feedback)},
    ]


def _error_code(reply: object) -> object:
    """The `error.code` of an OpenAI-style error body (`insufficient_quota`, say)."""
    error = reply.get("error") if isinstance(reply, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def parse_questions(content: str, count: int, least: int | None = None) -> list[str]:
    """At most `count` distinct, non-empty questions from the model's reply, and at least
    `least` (default: `count`), or a fault."""
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
    if len(seen) < (count if least is None else least):
        why = f" ({len(refused)} refused: {refused[0]})" if refused else ""
        raise UpstreamFault(
            "wrong_count",
            f"the reply has {len(seen)} usable questions, {count} were asked{why}",
            True,
        )
    return seen[:count]


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


@attrs.define
class _StreamedReply:
    """A streamed chat completion put back together: the content's pieces, the usage of
    its last event, and an error event's status (a fault after the headers were sent)."""

    pieces: list[str] = attrs.field(factory=list)
    usage: Any = None
    status: int = 200
    error: Any = None
    # an event that is not JSON: the reply is not a chat completion (its usage still counts)
    garbled: bool = False
    # `[DONE]` or an error came: a stream without either was cut off
    ended: bool = False

    def take(self, line: bytes) -> bool:
        """Reads one line of the stream; False at its end (`[DONE]` or an error)."""
        line = line.strip()
        # pings (":"), the blank lines between events, and event names carry nothing
        if not line.startswith(b"data:"):
            return True
        data = line[len(b"data:") :].strip()
        if data == b"[DONE]":
            self.ended = True
            return False
        event = _json_or_none(data)
        if not isinstance(event, dict):
            if not self.garbled:
                sample = data[:300].decode(errors="replace")
                log.warning("llm stream event unreadable", data=sample)
            self.garbled = True
            return True
        if "error" in event:
            self.status, self.error, self.ended = 500, event, True
            return False
        for choice in event.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                self.pieces.append(content)
        if event.get("usage"):
            self.usage = event["usage"]
        return True

    def as_json(self) -> Any:
        if self.error is not None:
            return self.error
        reply: dict[str, Any] = {}
        if not self.garbled:
            reply["choices"] = [{"message": {"content": "".join(self.pieces)}}]
        if self.usage is not None:
            reply["usage"] = self.usage
        return reply


class LLMQuestionGenerator:
    name = "llm"
    # the run checks its questions and asks again (`CheckedGenerator`)
    checks_questions = True
    examples = EXAMPLE_QUESTIONS

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
        self._headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self.server = LlamaServer(settings.base_url, self._headers)
        # calls in flight to the server, at most its slots (every run of this instance)
        self._gate: asyncio.Semaphore | None = None
        self.in_flight_limit = 0
        # the slowest recent answer, in seconds (decaying), that calls' timeouts allow for
        self.slowest_s = 0.0

    def __repr__(self) -> str:
        return f"<LLMQuestionGenerator model={self.settings.model} url={self._url}>"

    def session(self) -> aiohttp.ClientSession:
        """The generator's connection pool (the server's own endpoints are asked through it)."""
        return self._client()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # one pool for every worker; no per-host cap below the configured concurrency
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Waits for one of the server's slots (none when it has no known limit)."""
        if self._gate is None:
            limit = self.settings.max_in_flight or await self.server.slots(self._client())
            if limit > 0 and self._gate is None:
                self._gate = asyncio.Semaphore(limit)
                self.in_flight_limit = limit
        if self._gate is None:
            yield
            return
        async with self._gate:
            yield

    def timeout_for(self, timed_out: int) -> float:
        """A try's timeout after `timed_out` tries of the same call timed out."""
        base = max(self.settings.timeout_s, 2.0 * self.slowest_s)
        return min(base * 2.0**timed_out, MAX_TIMEOUT_FACTOR * self.settings.timeout_s)

    async def generate(
        self,
        chunk: Chunk,
        count: int,
        lane: Lane | None = None,
        feedback: Feedback | None = None,
        spare: int = 0,
    ) -> list[str]:
        """`count` questions about the chunk, and up to `spare` more: the prompt asks for
        `count + spare`, and a reply with at least `count` will do (`feedback`: it is asked
        again, told what was wrong with its last questions); the call retried under the
        retry policy."""
        tries = 0
        timed_out = 0

        async def attempt() -> list[str]:
            nonlocal tries, timed_out
            tries += 1
            try:
                return await self._call(
                    chunk, count, spare, lane, self.timeout_for(timed_out), feedback
                )
            except UpstreamFault as fault:
                self.stats.faults[fault.kind] += 1
                timed_out += fault.kind == "timeout"
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

    async def _call(
        self,
        chunk: Chunk,
        count: int,
        spare: int,
        lane: Lane | None,
        limit_s: float,
        feedback: Feedback | None = None,
    ) -> list[str]:
        asked = count + spare
        messages = chat_messages(chunk, asked, feedback)
        prompt_chars = sum(len(m["content"]) for m in messages)
        grant = await lane.acquire(prompt_chars, asked) if lane else None
        payload: dict[str, Any] = {
            "model": self.settings.model,
            "messages": messages,
            "temperature": FIRST_TEMPERATURE if feedback is None else REASK_TEMPERATURE,
            "response_format": {"type": "json_object"},
            "max_tokens": reply_tokens(asked),
        }
        sent = False
        try:
            # the timeout starts once a slot is free: a wait in the queue is not the
            # server failing to answer
            async with self._slot():
                streams = await self.server.slots(self._client()) > 0
                self.stats.calls += 1
                sent = True
                if streams:
                    status, reply, wait = await self._streamed(payload, limit_s)
                else:
                    started = time.monotonic()
                    async with (
                        asyncio.timeout(limit_s),
                        self._client().post(self._url, json=payload, headers=self._headers) as resp,
                    ):
                        status = resp.status
                        body = await resp.read()
                        wait = retry_after(resp.headers.get("Retry-After"))
                    elapsed = time.monotonic() - started
                    self.slowest_s = max(elapsed, self.slowest_s * SLOWEST_DECAY)
                    reply = _json_or_none(body)
        except TimeoutError as exc:
            self._answered(lane, grant, None, ok=False)
            why = exc.args[0] if exc.args else f"timed out after {limit_s:g}s"
            raise UpstreamFault("timeout", f"chat/completions {why}", True) from None
        except asyncio.CancelledError:
            # a cancel or a shutdown cut the call off: it was paid for all the same (unless
            # it never left its wait for a slot)
            if sent and lane is not None and grant is not None:
                lane.cut_off(grant)
            raise
        except aiohttp.ClientError as exc:
            self._answered(lane, grant, None, ok=False)
            raise UpstreamFault(
                "connection", f"cannot reach the LLM API ({type(exc).__name__})", True
            ) from None
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
            log.warning("llm reply unreadable", reply=str(reply)[:300])
            raise UpstreamFault(
                "bad_reply", "the response is not a chat completion", True
            ) from None
        if not isinstance(content, str):
            raise UpstreamFault("bad_reply", "the completion has no text content", True)
        return parse_questions(content, asked, least=count)

    async def _streamed(
        self, payload: dict[str, Any], silence_s: float
    ) -> tuple[int, Any, float | None]:
        """A call to a llama-server, streamed: (status, the reply as a whole, Retry-After).
        The server sends the headers when a slot takes the call up, a ping every
        `sse_ping_interval` seconds while it reads the prompt, then the answer token by
        token, so a working server is never silent for long however slow it is: the call
        times out when nothing came for `silence_s` (a stalled server, a lost connection),
        or at `MAX_TIMEOUT_FACTOR` times `timeout_s` in all. Sent whole, a first call's
        prompt on a cold CPU server took 43 s and timed out at 30 s, and a reply that ran
        to its token limit with both slots busy did too: work thrown away, done again."""
        loop = asyncio.get_running_loop()
        end = loop.time() + MAX_TIMEOUT_FACTOR * self.settings.timeout_s
        ping_s = max(1, int(silence_s / PINGS_PER_SILENCE))
        streamed = payload | {
            "stream": True,
            "stream_options": {"include_usage": True},
            "sse_ping_interval": ping_s,
        }
        quiet = asyncio.timeout_at(min(loop.time() + silence_s, end))
        try:
            async with (
                quiet,
                self._client().post(self._url, json=streamed, headers=self._headers) as resp,
            ):
                wait = retry_after(resp.headers.get("Retry-After"))
                if resp.status != 200 or resp.content_type != "text/event-stream":
                    return resp.status, _json_or_none(await resp.read()), wait
                reply = _StreamedReply()
                # read to the stream's end, past its [DONE]: a connection left mid-response
                # is closed, not kept for the next call
                while line := await resp.content.readline():
                    quiet.reschedule(min(loop.time() + silence_s, end))
                    if not reply.ended:
                        reply.take(line)
                if not reply.ended:
                    # the connection closed mid-answer: a transport fault, not a bad reply
                    raise aiohttp.ClientPayloadError("the stream ended before its [DONE]")
                return reply.status, reply.as_json(), wait
        except TimeoutError:
            if loop.time() >= end:
                raise TimeoutError(
                    f"took longer than {MAX_TIMEOUT_FACTOR * self.settings.timeout_s:g}s"
                ) from None
            raise TimeoutError(f"sent nothing for {silence_s:g}s") from None

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
