"""One rate budget per provider key, shared fairly by every run on every instance.

A provider limits an API key to R requests and T tokens a minute (`DEEPMEMORY_LLM_RPM`,
`DEEPMEMORY_LLM_TPM`; 0 is no limit). Every LLM call first takes a request and its
estimated tokens from this instance's pair of token buckets, whose rates are this
instance's share of the budget; the estimate is corrected from the reply's `usage`.

- **Shared across instances through PostgreSQL, not per call.** While it has calls to make,
  each instance exchanges a row with the database every `SYNC_S`: what each of its users
  wants (`demand`, a fraction of the budget; 1 = as much as it can get), and the budget's
  shared state. From every instance's claims it computes the same max-min fair split
  (`fair_shares`), so each user gets an equal part whatever the size of its run and
  whichever instance runs it, and a user that needs less leaves the rest to the others.
  With no limit configured nothing here runs: a call costs no database round trip.
- **Fair on this instance.** Calls that must wait queue per user and are granted in turn
  (round robin), so one user's many workers never starve another's.
- **A 429 slows the whole budget.** Any instance's 429 cuts the shared rate factor by a
  quarter (once per `HOLD_S`, however many calls were in flight) and pauses every instance
  for the reply's `Retry-After`; while calls succeed the factor grows back by
  `INCREASE_PER_S` a second (additive increase, multiplicative decrease).

The buckets, the split, the factor's steps and the token estimate are `budget_math.py`;
where instances meet is `budget_sharing.py`; what the debug view and `/metrics` show of a
budget is `budget_report.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import deque
from typing import Any

import attrs
import structlog

from deepmemory_service.llm.budget_math import (
    DECREASE,
    FLOOR,
    HOLD_S,
    MAX_PAUSE_S,
    Limits,
    Report,
    TokenBucket,
    TokenEstimate,
    fair_shares,
)
from deepmemory_service.llm.budget_sharing import BudgetStore, Claim
from deepmemory_service.llm.usage import Usage
from deepmemory_service.platform.stopping import cancel_all

log = structlog.get_logger(__name__)

# how often a busy instance exchanges its claims and report with the others
SYNC_S = 0.5
# how much of its rate an idle bucket may spend at once (a stalled event loop catching
# up, say); the provider's own buckets hold a second or more
BURST_S = 0.25
# a user whose calls did not wait asks for this much more than it used, so it can grow
HEADROOM = 1.5


@attrs.define
class Grant:
    """One call's place in the budget: what it was estimated to cost."""

    prompt_chars: int
    questions: int
    tokens: float


@attrs.define(eq=False)
class _UserQueue:
    waiters: deque[tuple[asyncio.Future[None], Grant]] = attrs.field(factory=deque)
    lanes: int = 0
    granted: int = 0
    waited: bool = False
    # not yet claimed anything: it asks for all it can get until it shows what it uses
    fresh: bool = True


@attrs.define(eq=False)
class Lane:
    """One run's seat at the budget: its calls wait here for their turn, and its tokens
    and calls are counted here (whether or not a limit is configured)."""

    budget: RateBudget
    user_id: uuid.UUID
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    waiting: int = 0
    waiting_since: float | None = None
    closed: bool = False

    @property
    def limited(self) -> bool:
        return self.budget.limits.limited

    async def acquire(self, prompt_chars: int, questions: int) -> Grant:
        """Waits for this call's turn and its share of the budget; returns its grant."""
        grant = Grant(prompt_chars, questions, self.budget.estimate(prompt_chars, questions))
        if self.limited:
            await self.budget.admit(self, grant)
        return grant

    def settle(self, grant: Grant, usage: Usage | None, *, ok: bool = True) -> None:
        """The call was answered (`ok`: successfully): count it, and correct the estimate
        from `usage`."""
        self.calls += 1
        if usage is not None:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
        self.budget.settle(grant, usage, ok=ok)

    def cut_off(self, grant: Grant) -> None:
        """The call was cut off in flight (a cancel, a shutdown): it reached the provider, so
        it counts; its tokens are what no reply said (a guess would count calls the provider
        answered with an error and billed nothing for), so none are added."""
        self.calls += 1
        self.budget.settle(grant, None, ok=False)

    def rate_limited(self, grant: Grant, retry_after_s: float | None) -> None:
        """The provider answered 429: the whole budget slows down and pauses."""
        self.calls += 1
        self.budget.rate_limited(grant, retry_after_s)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.budget.leave(self)


@attrs.define(eq=False)
class RateBudget:
    limits: Limits
    key: str
    instance_id: str
    store: BudgetStore | None = None
    clock: Any = time.monotonic
    factor: float = 1.0
    share: float = 1.0
    paused_until: float = 0.0
    granted: int = 0
    rate_limited_here: int = 0
    rate_limited_everywhere: int = 0
    estimator: TokenEstimate = attrs.field(factory=TokenEstimate)
    requests: TokenBucket = attrs.field(init=False)
    tokens: TokenBucket = attrs.field(init=False)
    _users: dict[uuid.UUID, _UserQueue] = attrs.field(factory=dict)
    _turns: deque[uuid.UUID] = attrs.field(factory=deque)
    _report: Report = attrs.field(factory=Report)
    _hold_until: float = 0.0
    _wake: asyncio.Event = attrs.field(factory=asyncio.Event)
    _sync_now: asyncio.Event = attrs.field(factory=asyncio.Event)
    _synced: asyncio.Event = attrs.field(factory=asyncio.Event)
    synced_at: float | None = None
    _last_share: float | None = None
    _dispatcher: asyncio.Task[None] | None = None
    _syncer: asyncio.Task[None] | None = None

    def __attrs_post_init__(self) -> None:
        now = self.clock()
        self.requests = TokenBucket.unlimited(now)
        self.tokens = TokenBucket.unlimited(now)
        self._retune(now)
        if self.store is None:
            self._synced.set()  # alone: the whole budget is this instance's

    # pacing

    def estimate(self, prompt_chars: int, questions: int) -> float:
        return self.estimator.tokens(prompt_chars, questions)

    def rates(self) -> tuple[float, float]:
        """This instance's requests and tokens a second, as things stand."""
        scale = self.factor * self.share / 60.0
        return self.limits.rpm * scale, self.limits.tpm * scale

    def _retune(self, now: float) -> None:
        """The buckets' rates from the limits, the factor and this instance's share (an
        unlimited bucket that becomes limited starts nearly empty: no burst at start)."""
        rps, tps = self.rates()
        for bucket, limit, rate in (
            (self.requests, self.limits.rpm, rps),
            (self.tokens, self.limits.tpm, tps),
        ):
            if limit > 0:
                capacity = max(1.0, rate * BURST_S)
                if math.isinf(bucket.capacity):
                    # about one call's worth
                    start = capacity / max(1.0, rps * BURST_S)
                    bucket.rate, bucket.capacity, bucket.level, bucket.at = (
                        rate,
                        capacity,
                        start,
                        now,
                    )
                bucket.retune(rate, capacity, now)
            else:
                bucket.retune(math.inf, math.inf, now)

    # calls

    async def admit(self, lane: Lane, grant: Grant) -> None:
        self._start()
        if not self._synced.is_set():
            # the first call of a quiet instance learns its share before it spends any
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._synced.wait()
        user = self._users[lane.user_id]
        now = self.clock()
        if not self._turns and self._may_take(grant, now) == 0.0:
            self._take(user, grant, now)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        user.waiters.append((future, grant))
        user.waited = True
        if lane.user_id not in self._turns:
            self._turns.append(lane.user_id)
        lane.waiting += 1
        if lane.waiting_since is None:
            lane.waiting_since = now
        self._wake.set()
        try:
            await future
        finally:
            lane.waiting -= 1
            if lane.waiting == 0:
                lane.waiting_since = None

    def _may_take(self, grant: Grant, now: float) -> float:
        if now < self.paused_until:
            return self.paused_until - now
        return max(self.requests.wait(1.0, now), self.tokens.wait(grant.tokens, now))

    def _take(self, user: _UserQueue, grant: Grant, now: float) -> None:
        self.requests.take(1.0, now)
        self.tokens.take(grant.tokens, now)
        user.granted += 1
        self.granted += 1

    async def _dispatch(self) -> None:
        """Grants waiting calls in turn, one user after another, as the buckets allow."""
        while self._turns:
            user_id = self._turns[0]
            user = self._users.get(user_id)
            while user is not None and user.waiters and user.waiters[0][0].done():
                user.waiters.popleft()  # its caller was cancelled
            if user is None or not user.waiters:
                self._turns.popleft()
                continue
            future, grant = user.waiters[0]
            now = self.clock()
            wait = self._may_take(grant, now)
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    # a sync may change the rates: look again when one lands
                    async with asyncio.timeout(min(wait, SYNC_S)):
                        await self._wake.wait()
                continue
            user.waiters.popleft()
            self._take(user, grant, now)
            future.set_result(None)
            self._turns.rotate(-1)
            if not user.waiters:
                self._turns.remove(user_id)

    def settle(self, grant: Grant, usage: Usage | None, *, ok: bool = True) -> None:
        if ok and self.limits.limited:
            self._report = self._report.merged(Report(successes=1))
        if usage is None:
            return
        if self.limits.tpm > 0:
            spent = usage.prompt_tokens + usage.completion_tokens
            self.tokens.take(spent - grant.tokens, self.clock())
        self.estimator.learn(grant.prompt_chars, grant.questions, usage)

    def rate_limited(self, _grant: Grant, retry_after_s: float | None) -> None:
        self.rate_limited_here += 1
        self._report = self._report.merged(Report(rate_limited=1, retry_after_s=retry_after_s))
        if not self.limits.limited:
            return
        # slow down here at once; the other instances hear of it at the exchange, now
        now = self.clock()
        if now >= self._hold_until:
            self.factor = max(FLOOR, self.factor * DECREASE)
            self._hold_until = now + HOLD_S
        self.paused_until = max(self.paused_until, now + min(retry_after_s or 0.0, MAX_PAUSE_S))
        self._retune(now)
        self._sync_now.set()
        self._wake.set()

    # lanes

    def lane(self, user_id: uuid.UUID) -> Lane:
        self._users.setdefault(user_id, _UserQueue()).lanes += 1
        return Lane(self, user_id)

    def leave(self, lane: Lane) -> None:
        user = self._users.get(lane.user_id)
        if user is None:
            return
        user.lanes -= 1
        if user.lanes <= 0 and not user.waiters:
            del self._users[lane.user_id]

    # sharing

    def _start(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="rate-budget")
        if self.store is not None and (self._syncer is None or self._syncer.done()):
            self._syncer = asyncio.create_task(self._sync_forever(), name="rate-budget-sync")

    async def _dispatch_forever(self) -> None:
        while self._users:
            await self._dispatch()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SYNC_S):
                    await self._wake.wait()

    def _claims(self) -> list[Claim]:
        per_user = self.limits.rpm * self.factor / 60.0 * SYNC_S
        claims = []
        for user_id, user in self._users.items():
            if user.fresh or user.waited or user.waiters:
                demand = 1.0
            else:
                demand = min(1.0, HEADROOM * user.granted / per_user + 0.01) if per_user else 1.0
            claims.append(Claim(self.instance_id, user_id, demand))
            user.granted, user.waited, user.fresh = 0, False, False
        return claims

    async def sync_once(self) -> None:
        assert self.store is not None
        mine = self._claims()
        report, self._report = self._report, Report()
        try:
            answer = await self.store.exchange(self.key, self.instance_id, mine, report)
        except BaseException:
            self._report = report.merged(self._report)  # the next exchange carries it
            raise
        now = self.clock()
        everyone = [*mine, *answer.others]
        shares = fair_shares([c.demand for c in everyone])
        share = sum(shares[: len(mine)]) if mine else 1.0
        # a share shrinks at once but grows only once the others have had an exchange to
        # shrink theirs (a newcomer among busy instances starts from nothing), so during a
        # change of hands the instances never take more than the whole budget together
        if self._last_share is None:
            self.share = 0.0 if answer.others else share
        else:
            self.share = min(share, self._last_share)
        self._last_share = share
        self.factor = answer.state.factor
        self.rate_limited_everywhere = answer.state.rate_limited
        # the database's clock gives durations; this instance's clock turns them into times
        self.paused_until = max(self.paused_until, now + answer.state.paused_until - answer.now)
        self._hold_until = max(self._hold_until, now + answer.state.hold_until - answer.now)
        self._retune(now)
        self.synced_at = now
        self._synced.set()
        self._wake.set()

    async def _sync_forever(self) -> None:
        while True:
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # keep the last share; an instance that cannot reach the database also
                # cannot store pairs, so its runs stop soon anyway
                log.warning("rate budget exchange failed", error=str(exc))
            if not self._users:
                # the exchange above withdrew this instance's claims; the next call starts
                # another exchange (no await between this check and leaving)
                self._synced.clear()
                self._last_share = None
                return
            self._sync_now.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SYNC_S):
                    await self._sync_now.wait()

    async def aclose(self) -> None:
        await cancel_all([t for t in (self._dispatcher, self._syncer) if t], "rate budget")

    # visibility

    @property
    def calls_waiting(self) -> int:
        return sum(len(u.waiters) for u in self._users.values())

    @property
    def users(self) -> int:
        """Users with a run drawing from the budget on this instance."""
        return len(self._users)

    def __repr__(self) -> str:
        return (
            f"<RateBudget key={self.key} rpm={self.limits.rpm:g} tpm={self.limits.tpm:g} "
            f"factor={self.factor:.2f} share={self.share:.2f} waiting={self.calls_waiting}>"
        )
