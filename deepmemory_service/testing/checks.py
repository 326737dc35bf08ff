"""What the tests and the benchmarks check in the database after a run."""

from __future__ import annotations

import uuid

from deepmemory_service.db import database


async def pairs_per_chunk(db_url: str, run_id: str) -> list[int]:
    """The pair count of each chunk of the run's snapshot (0 for one without pairs)."""
    async with database.connect(db_url) as conn:
        return await conn.pairs_per_snapshot_chunk(uuid.UUID(run_id))


async def one_pair_set_per_chunk(db_url: str, run_id: str, qpc: int) -> bool:
    """Every chunk of the run's snapshot has exactly `qpc` pairs: none missing, none twice."""
    counts = await pairs_per_chunk(db_url, run_id)
    return bool(counts) and set(counts) == {qpc}
