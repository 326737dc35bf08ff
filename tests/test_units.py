"""Small parts on their own: the broadcaster's bound, the chunker, the offline generator,
the bounded stop of background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from structlog.testing import capture_logs

from deepmemory_service.llm.generators import OfflineQuestionGenerator
from deepmemory_service.models import Chunk, JobEvent
from deepmemory_service.platform.side_tasks import SideTasks
from deepmemory_service.platform.stopping import ROUNDS, cancel_all
from deepmemory_service.runs.broadcaster import Broadcaster
from deepmemory_service.text import chunking


async def test_a_slow_subscriber_is_bounded_and_told_to_catch_up() -> None:
    broadcaster = Broadcaster(queue_size=4)
    job = uuid.uuid4()
    slow = broadcaster.subscribe(job)
    fast = broadcaster.subscribe(job)
    for i in range(1, 4):
        broadcaster.publish(JobEvent(i, job, "progress", {"done": i}))
    assert (await fast.next()).id == 1  # type: ignore[union-attr]
    for i in range(4, 1000):
        broadcaster.publish(JobEvent(i, job, "progress", {"done": i}))
        while not fast.queue.empty():
            fast.queue.get_nowait()
    assert slow.queue.qsize() <= 4
    assert await slow.next() is None  # lagged: catch up from the database
    assert broadcaster.lagged >= 1
    slow.close()
    fast.close()
    assert broadcaster.subscriber_count == 0
    assert not broadcaster.has_subscribers(job)


async def test_close_all_ends_every_subscription() -> None:
    broadcaster = Broadcaster()
    sub = broadcaster.subscribe(uuid.uuid4())
    broadcaster.close_all()
    assert await sub.next() is None
    assert sub.closed


def test_chunks_respect_size_sections_and_overlap() -> None:
    text = "# One\n\n" + " ".join(f"word{i}." for i in range(600)) + "\n\n# Two\n\nShort."
    chunks = chunking.split(text, size=500, overlap=50)
    assert all(len(c) <= 500 for c in chunks)
    assert chunks[-1] == "# Two\n\nShort."
    assert not any("# Two" in c for c in chunks[:-1])
    # neighbouring chunks of one section share a little text
    assert chunks[1].split()[0] in chunks[0]
    assert chunking.split("   \n\n  ") == []


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


def test_a_training_failure_message_names_no_server_path() -> None:
    from deepmemory_service.runs.train import _reason

    lost = FileNotFoundError(2, "No such file or directory", "/srv/dm/stores/u.deepmemory.npz")
    assert _reason(lost, 60, "/srv/dm") == (
        "Training failed: FileNotFoundError: No such file or directory"
    )
    odd = RuntimeError("cannot read /srv/dm/stores/u.versions/00000003-abc/embedding")
    assert "/srv/dm" not in _reason(odd, 60, "/srv/dm")


async def test_side_tasks_stop_though_a_task_lost_its_cancel() -> None:
    started = asyncio.Event()

    async def loses_one_cancel() -> None:
        started.set()
        # the cancel is lost here, as asyncio.wait_for on Python 3.11 lost a shutdown's
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        await asyncio.Event().wait()

    side = SideTasks(patience_s=0.05)
    side.start("deaf-once", loses_one_cancel)
    await started.wait()
    with capture_logs() as logs:
        stopping = asyncio.create_task(side.stop())
        # a deadline for a hang, not a speed target: stop() waited for ever before
        done, _ = await asyncio.wait([stopping], timeout=30)
    assert done, "SideTasks.stop still waiting 30 s after it began"
    said = [e for e in logs if e["event"] == "tasks still running after a cancel"]
    assert len(said) == 1
    assert said[0]["what"] == "side tasks"
    # where the task waited, for whoever reads the log of a slow shutdown
    assert "loses_one_cancel" in said[0]["tasks"][0]


async def test_a_task_that_ignores_every_cancel_is_left_behind_and_named() -> None:
    started, let_go = asyncio.Event(), asyncio.Event()

    async def ignores_cancels() -> None:
        started.set()
        while not let_go.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await let_go.wait()

    deaf = asyncio.create_task(ignores_cancels(), name="deaf")
    failing = asyncio.create_task(asyncio.sleep(-1, result=None), name="quick")
    await started.wait()
    with capture_logs() as logs:
        left = await cancel_all([deaf, failing], "test", patience_s=0.01)
    assert left == [deaf]
    assert [e["event"] for e in logs] == [
        *["tasks still running after a cancel"] * (ROUNDS - 1),
        "gave up waiting for tasks to stop",
    ]
    assert "ignores_cancels" in logs[-1]["tasks"][0]
    let_go.set()
    await deaf
