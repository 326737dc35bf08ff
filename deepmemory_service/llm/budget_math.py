"""The arithmetic of a shared LLM rate budget, free of time sources, tasks and I/O: token
buckets, the max-min fair split between claims, the shared rate factor's additive increase
and multiplicative decrease, and the token estimate of a call learned from replies.

`rate_budget.py` paces calls with these; `budget_sharing.py` carries the shared state
between instances."""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
from attrs import frozen

from deepmemory_service.llm.usage import Usage

INCREASE_PER_S = 0.1
DECREASE = 0.75
FLOOR = 0.05
HOLD_S = 2.0
# a pause asked for by Retry-After is honoured up to this long
MAX_PAUSE_S = 60.0
# tokens of a chat request beyond its text (roles, separators), and the first guesses of
# tokens per prompt character and per question asked, until replies say better
MESSAGE_OVERHEAD_TOKENS = 12
FIRST_TOKENS_PER_CHAR = 0.25
FIRST_TOKENS_PER_QUESTION = 24.0
LEARN = 0.1


@frozen
class Limits:
    rpm: float
    tpm: float

    @property
    def limited(self) -> bool:
        return self.rpm > 0 or self.tpm > 0


@attrs.define
class TokenBucket:
    """`rate` a second up to `capacity`; a take may overdraw (a reply used more tokens
    than estimated), which later takes then wait out. An infinite capacity never waits."""

    rate: float
    capacity: float
    level: float
    at: float

    @classmethod
    def unlimited(cls, now: float) -> TokenBucket:
        return cls(math.inf, math.inf, math.inf, now)

    def _refill(self, now: float) -> None:
        if math.isinf(self.capacity):
            self.level = math.inf
        else:
            self.level = min(self.capacity, self.level + max(0.0, now - self.at) * self.rate)
        self.at = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (a take larger than the bucket waits for a
        full one)."""
        self._refill(now)
        missing = min(amount, self.capacity) - self.level
        if missing <= 0:
            return 0.0
        return missing / self.rate if self.rate > 0 else math.inf

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount

    def retune(self, rate: float, capacity: float, now: float) -> None:
        self._refill(now)
        self.rate, self.capacity = rate, capacity
        self.level = min(self.level, capacity)


def fair_shares(demands: Sequence[float]) -> list[float]:
    """A max-min fair split of a budget of 1 between claims wanting `demands` (fractions of
    it; 1 or more means as much as there is). Claims wanting less than an equal part get
    what they want; the others split the rest equally; what is left over after every
    demand is met is split equally too."""
    n = len(demands)
    shares = [0.0] * n
    left = 1.0
    for k, i in enumerate(sorted(range(n), key=lambda j: demands[j])):
        shares[i] = min(max(demands[i], 0.0), left / (n - k))
        left -= shares[i]
    if n and left > 1e-12:
        shares = [s + left / n for s in shares]
    return shares


@frozen
class SharedState:
    """The budget's state every instance shares (times are the database's clock, epoch s)."""

    factor: float = 1.0
    adjusted_at: float = 0.0
    hold_until: float = 0.0
    paused_until: float = 0.0
    rate_limited: int = 0


@frozen
class Report:
    """What one instance saw since its last exchange."""

    successes: int = 0
    rate_limited: int = 0
    retry_after_s: float | None = None

    def merged(self, other: Report) -> Report:
        longest = max(self.retry_after_s or 0.0, other.retry_after_s or 0.0)
        return Report(
            self.successes + other.successes,
            self.rate_limited + other.rate_limited,
            longest or None,
        )


def advance(state: SharedState, now: float, report: Report) -> SharedState:
    """The shared state after an instance's report: additive increase for the time calls
    succeeded (past any hold), multiplicative decrease on 429s (once per hold), and a pause
    until the longest Retry-After."""
    factor, hold, paused = state.factor, state.hold_until, state.paused_until
    if report.successes:
        grow_from = max(state.adjusted_at, hold)
        factor = min(1.0, factor + INCREASE_PER_S * max(0.0, now - grow_from))
    if report.rate_limited:
        if now >= hold:
            factor = max(FLOOR, factor * DECREASE)
            hold = now + HOLD_S
        pause = min(report.retry_after_s or 0.0, MAX_PAUSE_S)
        paused = max(paused, now + pause)
    return SharedState(factor, now, hold, paused, state.rate_limited + report.rate_limited)


@attrs.define
class TokenEstimate:
    """A call's tokens before it is made, from its prompt's length and the questions it
    asks; each reply's `usage` moves the per-character and per-question figures towards
    what the provider counted."""

    per_char: float = FIRST_TOKENS_PER_CHAR
    per_question: float = FIRST_TOKENS_PER_QUESTION
    # replies learned from: 0 means the figures above are still the first guesses
    replies: int = 0

    def tokens(self, prompt_chars: int, questions: int) -> float:
        prompt = MESSAGE_OVERHEAD_TOKENS + prompt_chars * self.per_char
        return prompt + questions * self.per_question

    def learn(self, prompt_chars: int, questions: int, usage: Usage) -> None:
        self.replies += 1
        if prompt_chars > 0:
            seen = max(0, usage.prompt_tokens - MESSAGE_OVERHEAD_TOKENS) / prompt_chars
            self.per_char += LEARN * (seen - self.per_char)
        if questions > 0:
            seen = usage.completion_tokens / questions
            self.per_question += LEARN * (seen - self.per_question)
