"""A local stand-in for an OpenAI-compatible chat-completions API, with injectable faults.

Tests, benchmarks, and anyone trying the service offline point `DEEPMEMORY_LLM_BASE_URL`
at it. Faults come from a deterministic `schedule` (consumed call by call) or at random
with `fault_rate` over the `faults` mix: `429` (with Retry-After), `500`, `hang` (past any
client timeout), `bad_json`, `wrong_count`, and a reply whose first question holds a NUL
(`nul`), an unpaired surrogate (`surrogate`) or 400 KB of text (`long`). `fail_after=N`
fails every call after the Nth with a 500. The config can be changed while it runs:
`POST /_standin/config` with JSON, `GET /_standin/stats`, `POST /_standin/reset`.

With `slots` set it works as llama.cpp's `llama-server` does: `GET /props` says
`total_slots`, and it works on at most that many calls at once (the others wait in its
queue, their latency starting when a slot takes them up), and a call that asks for a
`stream` is streamed as it streams one (the headers when a slot takes the call up, an SSE
ping every `sse_ping_interval` seconds while it works, the content in pieces, then the
usage and `[DONE]`); `tokenizer` adds its
`POST /apply-template` and `POST /tokenize` (tokens are words here, and the template adds
the 4 words a message costs in `usage`).

Its questions are what a model that follows the prompt writes (`write_questions`: they pass
the service's checks of an LLM's questions); `replies` scripts the answers of the next
successful calls instead (questions a small model gets wrong, say). A call that asks again
(its prompt says why earlier questions were turned down) is counted in `reasks`, and writes
other questions than the calls before it for the chunk.

Every reply carries `usage` (tokens counted as words). With `rpm` or
`tpm` set it enforces a provider's limits per API key, as OpenAI does: a bucket of
requests and one of tokens, each holding `burst_s` seconds of its limit and refilling
continuously; a call past either is a 429 with `Retry-After` (whole seconds, at least 1)
and the `x-ratelimit-*` headers. A call's prompt tokens are taken when it arrives, its
completion tokens when it is answered.

    python -m deepmemory_service.testing.standin_llm --port 8900 --latency-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs
from aiohttp import web

from deepmemory_service.llm.budget_math import TokenBucket
from deepmemory_service.llm.client import read_user_prompt
from deepmemory_service.llm.question_checks import duplicate_key, words
from deepmemory_service.text.queries import STOPWORDS, key_terms, plain

FAULTS = ("429", "500", "hang", "bad_json", "wrong_count", "nul", "surrogate", "long")
# what the text faults put into one question: what PostgreSQL cannot store, or a page
_BAD_TEXT = {
    "nul": "What is\u0000 this?",
    "surrogate": "What is \ud800 this?",
    "long": "Why " * 100_000,
}
# the passage's words a question the stand-in writes takes: few enough that it is never a copy
QUESTION_WORDS = 8
# a name with letters and digits: what a question names to be about this passage
_NAME = re.compile(r"[a-z].*[0-9]|[0-9].*[a-z]")


def chunk_key(text: str) -> str:
    """How the stand-in names a chunk in its stats: a digest of the passage text."""
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]


@attrs.define
class StandinConfig:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULTS
    schedule: list[str] = attrs.field(factory=list)
    retry_after_s: int = 1
    hang_s: float = 3600.0
    fail_after: int | None = None
    api_key: str | None = attrs.field(default=None, repr=False)
    seed: int = 1234
    # scripted answers: each successful call takes the next list as its questions (a test
    # makes the model write bad ones); past the list, the stand-in writes its own
    replies: list[list[str]] = attrs.field(factory=list)
    rpm: float = 0.0
    tpm: float = 0.0
    burst_s: float = 1.0
    # llama-server's: calls worked on at once (0: no limit, no /props); tokenizer endpoints
    slots: int = 0
    tokenizer: bool = False


@attrs.define
class StandinStats:
    calls: int = 0
    successes: int = 0
    # calls refused by the rpm/tpm limits (also counted in faults["429"])
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    faults: Counter[str] = attrs.field(factory=Counter)
    # successful calls per chunk (by `chunk_key` of its text)
    per_chunk: Counter[str] = attrs.field(factory=Counter)
    # calls being worked on now and at most at once (with `slots`: never more than those)
    working: int = 0
    most_working: int = 0

    # calls that asked again: their prompt said why earlier questions were turned down
    reasks: int = 0
    # questions written for each chunk (by `chunk_key`), which a call asking again skips
    written: Counter[str] = attrs.field(factory=Counter)
    # the questions each call's prompt asked for, in order
    asked: list[int] = attrs.field(factory=list)

    def clear(self) -> None:
        self.working = self.most_working = 0
        self.calls = self.successes = self.rate_limited = self.reasks = 0
        self.asked.clear()
        self.prompt_tokens = self.completion_tokens = 0
        self.faults.clear()
        self.per_chunk.clear()
        self.written.clear()

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "successes": self.successes,
            "rate_limited": self.rate_limited,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "faults": dict(self.faults),
            "per_chunk": dict(self.per_chunk),
            "most_working": self.most_working,
            "reasks": self.reasks,
        }


def count_tokens(text: str) -> int:
    """The stand-in's tokenizer: words (cheap, so a benchmark measures the service)."""
    return len(text.split())


@attrs.define
class KeyLimits:
    """One API key's request and token buckets."""

    requests: TokenBucket | None
    tokens: TokenBucket | None

    @classmethod
    def of(cls, cfg: StandinConfig, now: float) -> KeyLimits:
        def bucket(per_minute: float) -> TokenBucket | None:
            if per_minute <= 0:
                return None
            size = max(1.0, per_minute / 60 * cfg.burst_s)
            return TokenBucket(per_minute / 60, size, size, now)

        return cls(bucket(cfg.rpm), bucket(cfg.tpm))

    def admit(self, prompt_tokens: int, now: float) -> float:
        """0 and the call's request and prompt tokens taken, or the seconds to wait."""
        wait = max(
            self.requests.wait(1, now) if self.requests else 0.0,
            self.tokens.wait(prompt_tokens, now) if self.tokens else 0.0,
        )
        if wait > 0:
            return wait
        if self.requests:
            self.requests.take(1, now)
        if self.tokens:
            self.tokens.take(prompt_tokens, now)
        return 0.0

    def headers(self, cfg: StandinConfig, now: float) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, bucket, limit in (
            ("requests", self.requests, cfg.rpm),
            ("tokens", self.tokens, cfg.tpm),
        ):
            if bucket is not None:
                bucket.wait(0, now)  # refill
                out[f"x-ratelimit-limit-{name}"] = f"{limit:g}"
                out[f"x-ratelimit-remaining-{name}"] = str(max(0, int(bucket.level)))
        return out


CONFIG = web.AppKey("standin_config", StandinConfig)
STATS = web.AppKey("standin_stats", StandinStats)
RNG = web.AppKey("standin_rng", random.Random)
LIMITS = web.AppKey("standin_limits", dict[str, KeyLimits])
SLOTS = web.AppKey("standin_slots", dict[int, asyncio.Semaphore])


def _pick_fault(app: web.Application) -> str | None:
    cfg, stats = app[CONFIG], app[STATS]
    if cfg.fail_after is not None and stats.calls > cfg.fail_after:
        return "500"
    if cfg.schedule:
        step = cfg.schedule.pop(0)
        return None if step == "ok" else step
    if cfg.fault_rate and app[RNG].random() < cfg.fault_rate:
        return app[RNG].choice(cfg.faults)
    return None


def write_questions(passage: str, count: int, skip: int = 0) -> list[str]:
    """`count` questions about the passage, as a model that follows the prompt writes them:
    each asks about a few of the passage's telling words in turn (never a stretch of it)
    and names the passage's most particular one (a name with digits in it, `component7`,
    else its first key term), no two alike (`duplicate_key`), after the first `skip` it
    would write (a call asking again writes other questions than the calls before it)."""
    telling = [w for w in words(plain(passage)) if w not in STOPWORDS]
    named = [w for w in telling if _NAME.search(w)] or key_terms(passage, 1) or ["it"]
    questions: list[str] = []
    keys: set[str] = set()

    def add(question: str) -> None:
        nonlocal skip
        key = duplicate_key(question)
        if len(questions) < count and key not in keys:
            keys.add(key)
            if skip > 0:
                skip -= 1
            else:
                questions.append(question)

    # windows of the telling words, overlapping by half (a short last one adds nothing new)
    for start in range(0, max(1, len(telling) - QUESTION_WORDS // 2), QUESTION_WORDS // 2):
        add(f"How does {' '.join(telling[start : start + QUESTION_WORDS])} relate to {named[0]}?")
    n = 1
    while len(questions) < count:
        add(f"What is detail {n} of {named[0]}?")
        n += 1
    return questions


def _completion(content: str, model: str, prompt_tokens: int) -> dict[str, Any]:
    completion_tokens = count_tokens(content)
    return {
        "id": f"chatcmpl-standin-{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


async def chat_completions(request: web.Request) -> web.StreamResponse:
    app = request.app
    cfg, stats = app[CONFIG], app[STATS]
    if cfg.api_key is not None and request.headers.get("Authorization") != f"Bearer {cfg.api_key}":
        return web.json_response(
            {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
            status=401,
        )
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    asked = read_user_prompt(prompt)
    if asked is None:
        return web.json_response({"error": {"message": "unrecognised prompt"}}, status=400)
    count, passage, again = asked.count, asked.text, asked.asking_again
    prompt_tokens = sum(4 + count_tokens(m["content"]) for m in body["messages"])
    stats.calls += 1
    stats.asked.append(count)
    limits_headers: dict[str, str] = {}
    if cfg.rpm > 0 or cfg.tpm > 0:
        now = time.monotonic()
        key = request.headers.get("Authorization", "")
        limits = app[LIMITS].setdefault(key, KeyLimits.of(cfg, now))
        wait = limits.admit(prompt_tokens, now)
        limits_headers = limits.headers(cfg, now)
        if wait > 0:
            stats.rate_limited += 1
            stats.faults["429"] += 1
            return web.json_response(
                {
                    "error": {
                        "message": "Rate limit reached for requests",
                        "type": "requests",
                        "code": "rate_limit_exceeded",
                    }
                },
                status=429,
                headers={"Retry-After": str(max(1, math.ceil(wait))), **limits_headers},
            )
    slot: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
    if cfg.slots > 0:
        slot = app[SLOTS].setdefault(cfg.slots, asyncio.Semaphore(cfg.slots))
    async with slot:
        with _working(app[STATS]):
            return await _work(request, body, count, passage, again, prompt_tokens, limits_headers)


@contextlib.contextmanager
def _working(stats: StandinStats) -> Iterator[None]:
    """Counts a call being worked on (a slot has taken it up)."""
    stats.working += 1
    stats.most_working = max(stats.most_working, stats.working)
    try:
        yield
    finally:
        stats.working -= 1


async def _work(
    request: web.Request,
    body: dict[str, Any],
    count: int,
    passage: str,
    again: bool,
    prompt_tokens: int,
    limits_headers: dict[str, str],
) -> web.StreamResponse:
    app = request.app
    cfg, stats = app[CONFIG], app[STATS]
    fault = _pick_fault(app)
    delay = cfg.latency_ms + (app[RNG].uniform(0, cfg.jitter_ms) if cfg.jitter_ms else 0.0)
    stream: web.StreamResponse | None = None
    if body.get("stream") and fault not in ("429", "500", "hang"):
        # as llama-server: the headers when a slot takes the call up, pings while it works
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", **limits_headers})
        await stream.prepare(request)
        await _pinging(stream, delay / 1000, float(body.get("sse_ping_interval", 30)))
    elif delay:
        await asyncio.sleep(delay / 1000)
    if fault is not None:
        stats.faults[fault] += 1
    if fault == "429":
        return web.json_response(
            {"error": {"message": "Rate limit reached"}},
            status=429,
            headers={"Retry-After": str(cfg.retry_after_s)},
        )
    if fault == "500":
        return web.json_response({"error": {"message": "The server had an error"}}, status=500)
    if fault == "hang":
        await asyncio.sleep(cfg.hang_s)
    if again:
        stats.reasks += 1
    scripted = cfg.replies.pop(0) if cfg.replies and fault is None else None
    key = chunk_key(passage)
    skip = stats.written[key] if again else 0
    questions = scripted if scripted is not None else write_questions(passage, count, skip)
    stats.written[key] = skip + len(questions)
    if fault == "bad_json":
        content = '{"questions": ["unterminated'
    elif fault in _BAD_TEXT:
        content = json.dumps({"questions": [_BAD_TEXT[fault], *questions[1:]]})
    elif fault == "wrong_count":
        content = json.dumps({"questions": questions[: max(0, count - 1)]})
    else:
        content = json.dumps({"questions": questions})
        stats.successes += 1
        stats.per_chunk[chunk_key(passage)] += 1
    reply = _completion(content, body.get("model", "standin"), prompt_tokens)
    # what a client is billed: the usage of every reply that carries one
    completion_tokens = reply["usage"]["completion_tokens"]
    stats.prompt_tokens += prompt_tokens
    stats.completion_tokens += completion_tokens
    if cfg.tpm > 0:
        key = request.headers.get("Authorization", "")
        bucket = app[LIMITS][key].tokens
        if bucket is not None:
            bucket.take(completion_tokens, time.monotonic())
    if stream is not None:
        await _stream_reply(stream, reply)
        return stream
    return web.json_response(reply, headers=limits_headers)


async def _pinging(stream: web.StreamResponse, seconds: float, every_s: float) -> None:
    """Works `seconds`, sending llama-server's SSE ping (a comment) every `every_s`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        await asyncio.sleep(min(left, every_s) if every_s > 0 else left)
        if every_s > 0 and end - loop.time() > 0:
            await stream.write(b":\n\n")


async def _stream_reply(stream: web.StreamResponse, reply: dict[str, Any]) -> None:
    """The reply as llama-server streams one: the content in pieces, then the finish, the
    usage (`stream_options.include_usage`) and `[DONE]`."""
    content = reply["choices"][0]["message"]["content"]
    head = {k: reply[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    async def event(data: dict[str, Any]) -> None:
        await stream.write(b"data: " + json.dumps(head | data).encode() + b"\n\n")

    step = max(1, len(content) // 4)
    for start in range(0, len(content), step):
        await event(
            {"choices": [{"index": 0, "delta": {"content": content[start : start + step]}}]}
        )
    await event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    await event({"choices": [], "usage": reply["usage"]})
    await stream.write(b"data: [DONE]\n\n")
    await stream.write_eof()


async def props(request: web.Request) -> web.Response:
    slots = request.app[CONFIG].slots
    if slots <= 0:
        raise web.HTTPNotFound
    return web.json_response({"total_slots": slots, "model_alias": "standin"})


# each message costs 4 tokens beyond its content in `usage`: its template adds 4 words
_TEMPLATE = "<|start|> {role} <|sep|> <|end|> {content}"


async def apply_template(request: web.Request) -> web.Response:
    if not request.app[CONFIG].tokenizer:
        raise web.HTTPNotFound
    body = await request.json()
    prompt = "\n".join(_TEMPLATE.format(**m) for m in body["messages"])
    return web.json_response({"prompt": prompt})


async def tokenize(request: web.Request) -> web.Response:
    if not request.app[CONFIG].tokenizer:
        raise web.HTTPNotFound
    body = await request.json()
    return web.json_response({"tokens": list(range(count_tokens(body["content"])))})


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS].as_json())


async def set_config(request: web.Request) -> web.Response:
    changes = await request.json()
    cfg = request.app[CONFIG]
    for key, value in changes.items():
        if key not in attrs.fields_dict(StandinConfig):
            return web.json_response({"detail": f"unknown setting {key}"}, status=400)
        setattr(cfg, key, tuple(value) if key == "faults" else value)
    request.app[LIMITS].clear()  # new limits start with full buckets
    return web.json_response({"ok": True})


async def reset(request: web.Request) -> web.Response:
    request.app[STATS].clear()
    return web.json_response({"ok": True})


def create_standin_app(config: StandinConfig | None = None) -> web.Application:
    app = web.Application()
    cfg = config or StandinConfig()
    app[CONFIG] = cfg
    app[STATS] = StandinStats()
    app[RNG] = random.Random(cfg.seed)  # noqa: S311  # reproducible fault mix, not secrets
    app[LIMITS] = {}
    app[SLOTS] = {}
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/props", props)
    app.router.add_post("/apply-template", apply_template)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_get("/_standin/stats", get_stats)
    app.router.add_post("/_standin/config", set_config)
    app.router.add_post("/_standin/reset", reset)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--fail-after", type=int)
    parser.add_argument("--retry-after", type=int, default=1)
    parser.add_argument("--api-key")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--rpm", type=float, default=0.0, help="requests a minute per API key")
    parser.add_argument("--tpm", type=float, default=0.0, help="tokens a minute per API key")
    parser.add_argument("--burst-s", type=float, default=1.0, help="bucket size, in seconds")
    parser.add_argument("--slots", type=int, default=0, help="calls worked on at once")
    parser.add_argument("--tokenizer", action="store_true", help="llama-server's tokenizer API")
    args = parser.parse_args()
    config = StandinConfig(
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        fault_rate=args.fault_rate,
        faults=tuple(f for f in args.faults.split(",") if f),
        fail_after=args.fail_after,
        retry_after_s=args.retry_after,
        api_key=args.api_key,
        seed=args.seed,
        rpm=args.rpm,
        tpm=args.tpm,
        burst_s=args.burst_s,
        slots=args.slots,
        tokenizer=args.tokenizer,
    )
    web.run_app(
        create_standin_app(config),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda _: print(f"stand-in LLM on http://{args.host}:{args.port}/v1", flush=True),
    )


if __name__ == "__main__":
    main()
