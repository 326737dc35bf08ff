"""Where the instances sharing one provider key's budget meet: each exchange applies an
instance's report to the shared state and swaps its users' claims for everyone else's.
PostgreSQL in service (one short transaction per exchange, no new server); in memory for
several budgets in one process (tests)."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from attrs import frozen

from deepmemory_service.llm.budget_math import Report, SharedState, advance

if TYPE_CHECKING:
    from deepmemory_service.db.database import Database

# a claim not refreshed for this long belongs to a run or an instance that is gone
CLAIM_TTL_S = 2.0


def budget_key(base_url: str, api_key: str) -> str:
    """The budget's name: a digest of the endpoint and the key (never the key itself)."""
    digest = hashlib.sha256(f"{base_url.rstrip('/')}\0{api_key}".encode()).hexdigest()
    return digest[:16]


@frozen
class Claim:
    instance_id: str
    user_id: uuid.UUID
    demand: float


@frozen
class Exchanged:
    """The database's answer to an exchange: the shared state, its clock, others' claims."""

    state: SharedState
    now: float
    others: list[Claim]


class BudgetStore(Protocol):
    """Where instances meet (PostgreSQL; `MemoryBudgetStore` in tests)."""

    async def exchange(
        self, key: str, instance_id: str, claims: list[Claim], report: Report
    ) -> Exchanged:
        """Applies `report` to the shared state (`advance`), replaces this instance's claims,
        and returns the state with the live claims of the other instances."""
        ...


@attrs.define
class MemoryBudgetStore:
    """The database's part in memory, for several budgets in one process (tests)."""

    clock: Any = time.time
    states: dict[str, SharedState] = attrs.field(factory=dict)
    claims: dict[tuple[str, str], tuple[float, list[Claim]]] = attrs.field(factory=dict)

    async def exchange(
        self, key: str, instance_id: str, claims: list[Claim], report: Report
    ) -> Exchanged:
        now = float(self.clock())
        state = self.states.get(key) or SharedState(adjusted_at=now)
        self.states[key] = state = advance(state, now, report)
        self.claims[(key, instance_id)] = (now, list(claims))
        others = [
            claim
            for (k, inst), (at, made) in self.claims.items()
            if k == key and inst != instance_id and now - at < CLAIM_TTL_S
            for claim in made
        ]
        return Exchanged(state, now, others)


@attrs.define
class PostgresBudgetStore:
    """Instances meet in PostgreSQL: one short transaction per exchange, the budget's row
    locked while the report is applied."""

    db: Database

    async def exchange(
        self, key: str, instance_id: str, claims: list[Claim], report: Report
    ) -> Exchanged:
        async with self.db.tx() as conn:
            stored, now = await conn.budget_lock(key)
            state = advance(SharedState(**stored), now, report)
            await conn.budget_save(key, attrs.asdict(state))
            others = await conn.budget_claim(
                key, instance_id, [(c.user_id, c.demand) for c in claims], CLAIM_TTL_S
            )
        return Exchanged(state, now, [Claim(*other) for other in others])
