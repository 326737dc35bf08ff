"""The shared LLM rate budget: its arithmetic, and budgets of several instances meeting in
one store (in memory here; processes/test_shared_budget.py runs real processes on PostgreSQL)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

import attrs
import pytest

from deepmemory_service.llm.budget_math import (
    DECREASE,
    FLOOR,
    HOLD_S,
    INCREASE_PER_S,
    MAX_PAUSE_S,
    MESSAGE_OVERHEAD_TOKENS,
    Limits,
    Report,
    SharedState,
    TokenBucket,
    TokenEstimate,
    advance,
    fair_shares,
)
from deepmemory_service.llm.budget_sharing import Claim, Exchanged, MemoryBudgetStore, budget_key
from deepmemory_service.llm.rate_budget import Grant, Lane, RateBudget
from deepmemory_service.llm.usage import Prices, Usage


def test_a_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    bucket = TokenBucket(rate=10.0, capacity=5.0, level=5.0, at=0.0)
    assert bucket.wait(5, 0.0) == 0.0
    bucket.take(5, 0.0)
    assert bucket.wait(1, 0.0) == pytest.approx(0.1)
    assert bucket.wait(3, 0.2) == pytest.approx(0.1)  # 2 refilled, one more to come
    assert bucket.wait(1, 100.0) == 0.0
    assert bucket.level == 5.0  # never above capacity


def test_an_overdrawn_bucket_makes_later_takes_wait() -> None:
    bucket = TokenBucket(rate=100.0, capacity=100.0, level=100.0, at=0.0)
    bucket.take(60, 0.0)  # estimated
    bucket.take(90, 0.0)  # the reply said the call cost 90 more than estimated
    assert bucket.level == -50.0
    assert bucket.wait(10, 0.0) == pytest.approx(0.6)


def test_a_take_larger_than_the_bucket_waits_for_a_full_one() -> None:
    bucket = TokenBucket(rate=1.0, capacity=10.0, level=4.0, at=0.0)
    assert bucket.wait(50, 0.0) == pytest.approx(6.0)


def test_an_unlimited_bucket_never_waits() -> None:
    bucket = TokenBucket.unlimited(0.0)
    bucket.take(1e9, 0.0)
    assert bucket.wait(1e9, 0.0) == 0.0
    assert bucket.wait(1e9, 5.0) == 0.0


def test_retuning_keeps_the_level_within_the_new_capacity() -> None:
    bucket = TokenBucket(rate=10.0, capacity=10.0, level=10.0, at=0.0)
    bucket.retune(2.0, 1.0, 0.0)
    assert (bucket.rate, bucket.capacity, bucket.level) == (2.0, 1.0, 1.0)
    bucket.retune(20.0, 10.0, 0.5)
    assert bucket.level == 1.0  # refilled at the old rate and capacity until now
    bucket.retune(20.0, 10.0, 1.0)
    assert bucket.level == 10.0  # and at the new one since, up to the new capacity


@pytest.mark.parametrize(
    ("demands", "shares"),
    [
        ([], []),
        ([1.0], [1.0]),
        ([0.1], [1.0]),  # alone: all of it, needed or not
        ([1.0, 1.0, 1.0, 1.0], [0.25] * 4),
        ([5.0, 1.0], [0.5, 0.5]),  # "as much as there is" is capped by the others' share
        ([0.1, 1.0, 1.0], [0.1, 0.45, 0.45]),  # a small user leaves the rest to the others
        ([0.1, 0.2], [0.45, 0.55]),  # demands below the budget: the rest is spread evenly
    ],
)
def test_fair_shares_are_max_min_fair(demands: list[float], shares: list[float]) -> None:
    got = fair_shares(demands)
    assert got == pytest.approx(shares)
    if demands:
        assert sum(got) == pytest.approx(1.0)


def test_a_429_halves_the_factor_once_per_hold_and_pauses_for_retry_after() -> None:
    state = SharedState(adjusted_at=100.0)
    hit = advance(state, 100.0, Report(rate_limited=3, retry_after_s=7.0))
    assert hit.factor == pytest.approx(DECREASE)
    assert hit.hold_until == pytest.approx(100.0 + HOLD_S)
    assert hit.paused_until == pytest.approx(107.0)
    assert hit.rate_limited == 3
    # more 429s from calls already in flight, within the hold: no second cut
    again = advance(hit, 100.5, Report(rate_limited=2, retry_after_s=1.0))
    assert again.factor == pytest.approx(DECREASE)
    assert again.paused_until == pytest.approx(107.0)  # the longer pause stands
    # after the hold, another 429 cuts again, never below the floor
    cut = advance(again, 100.0 + HOLD_S + 1, Report(rate_limited=1))
    assert cut.factor == pytest.approx(DECREASE**2)
    state = SharedState(factor=FLOOR, adjusted_at=0.0)
    assert advance(state, 10.0, Report(rate_limited=1)).factor == FLOOR
    assert advance(state, 10.0, Report(rate_limited=1, retry_after_s=1e6)).paused_until == (
        pytest.approx(10.0 + MAX_PAUSE_S)
    )


def test_the_factor_grows_back_while_calls_succeed_and_only_after_the_hold() -> None:
    cut = SharedState(factor=0.5, adjusted_at=100.0, hold_until=102.0)
    # inside the hold: no increase, however many successes
    assert advance(cut, 101.0, Report(successes=50)).factor == pytest.approx(0.5)
    grown = advance(cut, 104.0, Report(successes=10))
    assert grown.factor == pytest.approx(0.5 + INCREASE_PER_S * 2.0)
    # no successes to show: no increase (the time is used up all the same)
    idle = advance(grown, 110.0, Report())
    assert idle.factor == grown.factor
    assert idle.adjusted_at == 110.0
    assert advance(idle, 1000.0, Report(successes=1)).factor == 1.0


def test_estimates_learn_from_usage() -> None:
    budget = RateBudget(Limits(0, 0), "k", "a")
    lane = budget.lane(uuid.uuid4())
    first = budget.estimate(1000, 3)
    for _ in range(60):
        lane.settle(budget_grant(budget, 1000, 3), Usage(prompt_tokens=512, completion_tokens=90))
    learned = budget.estimate(1000, 3)
    assert first != pytest.approx(learned)
    assert learned == pytest.approx(512 + 90, rel=0.02)
    assert (lane.calls, lane.prompt_tokens, lane.completion_tokens) == (60, 512 * 60, 90 * 60)


def test_a_token_estimate_moves_a_tenth_of_the_way_to_each_reply() -> None:
    estimate = TokenEstimate(per_char=0.25, per_question=20.0)
    assert estimate.tokens(400, 3) == MESSAGE_OVERHEAD_TOKENS + 100 + 60
    estimate.learn(400, 3, Usage(prompt_tokens=MESSAGE_OVERHEAD_TOKENS + 200, completion_tokens=90))
    assert estimate.per_char == pytest.approx(0.25 + 0.1 * (0.5 - 0.25))
    assert estimate.per_question == pytest.approx(20.0 + 0.1 * (30.0 - 20.0))
    estimate.learn(0, 0, Usage(prompt_tokens=10**6, completion_tokens=10**6))  # nothing to learn
    assert estimate.per_char == pytest.approx(0.275)


def test_reports_merge_their_counts_and_keep_the_longest_retry_after() -> None:
    merged = Report(successes=3, rate_limited=1, retry_after_s=2.0).merged(
        Report(successes=1, rate_limited=2, retry_after_s=5.0)
    )
    assert merged == Report(successes=4, rate_limited=3, retry_after_s=5.0)
    assert Report(successes=1).merged(Report()) == Report(successes=1)


def budget_grant(budget: RateBudget, chars: int, questions: int) -> Grant:
    return Grant(chars, questions, budget.estimate(chars, questions))


def test_prices_make_a_cost_and_none_without_them() -> None:
    assert Prices(0, 0).cost(10**6, 10**6) is None
    assert Prices(0.15, 0.60).cost(2_000_000, 500_000) == pytest.approx(0.6)


def test_the_budget_key_names_endpoint_and_key_without_the_key() -> None:
    key = budget_key("https://api.example/v1/", "sk-secret-123")
    assert key == budget_key("https://api.example/v1", "sk-secret-123")
    assert key != budget_key("https://api.example/v1", "sk-other")
    assert "secret" not in key


@attrs.define
class CountingStore(MemoryBudgetStore):
    exchanges: int = 0

    async def exchange(self, *args: Any) -> Exchanged:
        self.exchanges += 1
        return await super().exchange(*args)


async def test_without_a_limit_a_call_neither_waits_nor_exchanges() -> None:
    store = CountingStore()
    budget = RateBudget(Limits(0, 0), "k", "a", store=store)
    lane = budget.lane(uuid.uuid4())
    for _ in range(1000):
        await asyncio.wait_for(lane.acquire(400, 3), 0.01)
    assert store.exchanges == 0
    assert budget.calls_waiting == 0
    await budget.aclose()


async def drive(lane: Lane, until: float, counts: dict[uuid.UUID, int]) -> None:
    """One worker of a run: calls as fast as its lane lets it, until `until`."""
    while time.monotonic() < until:
        grant = await lane.acquire(400, 3)
        counts[lane.user_id] += 1
        lane.settle(grant, Usage(110, 40))


async def test_two_instances_split_one_budget_fairly_between_four_users() -> None:
    """Three users on instance A, one on B, each with several workers: every user gets about
    a quarter of the budget, and together they never get more than the budget."""
    rpm = 6000.0  # 100 calls a second
    store = MemoryBudgetStore()
    a = RateBudget(Limits(rpm, 0), "k", "a", store=store)
    b = RateBudget(Limits(rpm, 0), "k", "b", store=store)
    users = [uuid.uuid4() for _ in range(4)]
    lanes = [a.lane(users[0]), a.lane(users[1]), a.lane(users[2]), b.lane(users[3])]
    counts = dict.fromkeys(users, 0)
    started = time.monotonic()
    warmup, window = 0.6, 2.0
    tasks = [
        asyncio.create_task(drive(lane, started + warmup + window, counts))
        for lane in lanes
        for _ in range(6)
    ]
    await asyncio.sleep(warmup)
    at_warmup = dict(counts)
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    shares = {u: counts[u] - at_warmup[u] for u in users}
    total = sum(shares.values())
    for user in users:
        assert abs(shares[user] / total - 0.25) <= 0.25 * 0.2, shares
    # the whole budget, and no more (plus the buckets' first fill)
    assert sum(counts.values()) <= rpm / 60 * (elapsed + 1.0)
    assert total >= 0.8 * rpm / 60 * window
    for lane in lanes:
        lane.close()
    await asyncio.gather(a.aclose(), b.aclose())


async def test_a_single_user_gets_the_whole_budget() -> None:
    rpm = 3000.0
    store = MemoryBudgetStore()
    a = RateBudget(Limits(rpm, 0), "k", "a", store=store)
    user = uuid.uuid4()
    lane = a.lane(user)
    counts = {user: 0}
    started = time.monotonic()
    await asyncio.gather(*(drive(lane, started + 1.5, counts) for _ in range(8)))
    elapsed = time.monotonic() - started
    assert counts[user] >= 0.85 * rpm / 60 * elapsed
    lane.close()
    await a.aclose()


async def test_a_429_slows_and_pauses_every_instance() -> None:
    store = MemoryBudgetStore()
    a = RateBudget(Limits(600, 0), "k", "a", store=store)
    b = RateBudget(Limits(600, 0), "k", "b", store=store)
    lane_a, lane_b = a.lane(uuid.uuid4()), b.lane(uuid.uuid4())
    await lane_a.acquire(100, 1)
    await lane_b.acquire(100, 1)
    grant = await lane_a.acquire(100, 1)
    lane_a.rate_limited(grant, 1.0)
    assert a.factor == pytest.approx(DECREASE)
    assert a.paused_until - time.monotonic() == pytest.approx(1.0, abs=0.1)
    # B hears of it at its next exchange (within SYNC_S); A's own exchange reports it now
    await a.sync_once()
    await b.sync_once()
    assert b.factor == pytest.approx(DECREASE)
    assert b.paused_until - time.monotonic() > 0.5
    assert a.rate_limited_everywhere == b.rate_limited_everywhere == 1
    # B's next call waits out the pause
    started = time.monotonic()
    await lane_b.acquire(100, 1)
    assert time.monotonic() - started >= 0.5
    lane_a.close()
    lane_b.close()
    await asyncio.gather(a.aclose(), b.aclose())


async def test_a_tokens_limit_paces_by_estimated_then_reported_tokens() -> None:
    """With 6,000 tokens a minute (100 a second) and calls costing 50 tokens, about two
    calls a second go through; replies reporting 150 tokens slow that to about two-thirds
    of one."""
    budget = RateBudget(Limits(0, 6000), "k", "a")
    lane = budget.lane(uuid.uuid4())
    budget.estimator.per_char, budget.estimator.per_question = 0.0, 0.0
    grant = await lane.acquire(0, 0)
    assert grant.tokens == pytest.approx(12)  # the per-message overhead alone
    budget.tokens.level = 0.0
    started = time.monotonic()
    grant = await lane.acquire(0, 0)
    assert 0.08 <= time.monotonic() - started < 0.6
    lane.settle(grant, Usage(100, 50), ok=True)  # 138 more than estimated
    started = time.monotonic()
    await lane.acquire(0, 0)
    # the overdraft is paid back first (the estimate also learned from the reply)
    assert time.monotonic() - started >= 1.2
    assert not math.isinf(budget.tokens.rate)
    lane.close()
    await budget.aclose()


def test_claims_reach_other_instances_only_while_fresh() -> None:
    now = [1000.0]
    store = MemoryBudgetStore(clock=lambda: now[0])
    user_a, user_b = uuid.uuid4(), uuid.uuid4()

    async def exchange(instance: str, claims: list[Claim]) -> list[Claim]:
        return (await store.exchange("k", instance, claims, Report())).others

    async def scenario() -> None:
        await exchange("a", [Claim("a", user_a, 1.0)])
        assert await exchange("b", [Claim("b", user_b, 1.0)]) == [Claim("a", user_a, 1.0)]
        now[0] += 5.0  # a stopped exchanging: its claim is gone
        assert await exchange("b", [Claim("b", user_b, 1.0)]) == []

    asyncio.run(scenario())
