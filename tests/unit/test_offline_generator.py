"""The offline question generator: queries cut from the chunk, the same in every process."""

from __future__ import annotations

from deepmemory_service.llm.generators import OfflineQuestionGenerator
from deepmemory_service.models import Chunk

CHUNK_TEXT = (
    "## Advisory locks\n\nPostgreSQL advisory locks serialise commands. Leases expire when "
    "a worker dies. The sweeper fails the run.\n\nA second paragraph says more about "
    "**leases** and `locks`."
)


async def test_offline_queries_are_deterministic_distinct_and_cut_from_the_chunk() -> None:
    chunk = Chunk(1, CHUNK_TEXT)
    # the best kinds first, in turn: a topic sentence (here a heading), another sentence,
    # key terms as typed into a search box; no markup. The same list in every process and
    # release: a regenerated run trains on what the last one did.
    assert await OfflineQuestionGenerator().generate(chunk, 6) == [
        "Advisory locks",
        "Leases expire when a worker dies.",
        "locks advisory leases",
        "PostgreSQL advisory locks serialise commands.",
        "The sweeper fails the run.",
        "leases commands",
    ]
    for count in (1, 2, 3, 10):
        queries = await OfflineQuestionGenerator().generate(chunk, count)
        assert queries == await OfflineQuestionGenerator().generate(chunk, count)
        assert len(set(queries)) == count
        assert all(q.strip() == q and q for q in queries)
    # a chunk too short for that many distinct queries still gets exactly `count`
    short = await OfflineQuestionGenerator().generate(Chunk(2, "Vacuum."), 4)
    assert len(set(short)) == 4
    assert all("vacuum" in q.lower() for q in short)
