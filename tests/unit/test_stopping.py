"""The bounded stop of background tasks: one that lost its cancel still stops, one that
ignores every cancel is left behind and named in the log."""

from __future__ import annotations

import asyncio
import contextlib

from structlog.testing import capture_logs

from deepmemory_service.platform.side_tasks import SideTasks
from deepmemory_service.platform.stopping import ROUNDS, cancel_all


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
