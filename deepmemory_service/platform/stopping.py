"""Stopping tasks in bounded time. A task that is still running a while after its cancel
(it lost the cancel, or a cleanup of its own is stuck) is named in the log with where it
waits and cancelled again; after a few rounds it is left behind, logged, so a shutdown goes
on to release its runs and exit instead of hanging on it."""

from __future__ import annotations

import asyncio
import reprlib
from collections.abc import Iterable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# how long a cancelled task may take to end before it is cancelled again
PATIENCE_S = 5.0
ROUNDS = 3
MAX_DEPTH = 30


def where(task: asyncio.Task[Any]) -> str:
    """The task's name and where it waits: each coroutine down the chain of awaits (a task's
    own stack stops at its outermost one), then what the innermost awaits."""
    lines = [task.get_name()]
    step: Any = task.get_coro()
    while step is not None and len(lines) < MAX_DEPTH:
        frame = getattr(step, "cr_frame", None) or getattr(step, "gi_frame", None)
        if frame is None:
            lines.append(f"  awaiting {reprlib.repr(step)}")
            break
        code = frame.f_code
        lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_qualname}")
        step = getattr(step, "cr_await", None) or getattr(step, "gi_yieldfrom", None)
    return "\n".join(lines)


async def cancel_all(
    tasks: Iterable[asyncio.Task[Any]], what: str, *, patience_s: float = PATIENCE_S
) -> list[asyncio.Task[Any]]:
    """Cancels the tasks and waits for them to end, at most `ROUNDS` times `patience_s`;
    returns those left running. A failure a task ends with is logged, not raised."""
    every = list(tasks)
    pending = {t for t in every if not t.done()}
    for attempt in range(1, ROUNDS + 1):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=patience_s)
        if pending:
            log.warning(
                "tasks still running after a cancel"
                if attempt < ROUNDS
                else "gave up waiting for tasks to stop",
                what=what,
                seconds=patience_s * attempt,
                tasks=[where(t) for t in pending],
            )
    for task in every:
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            log.warning(
                "task failed while stopping",
                what=what,
                task=task.get_name(),
                error=f"{type(exc).__name__}: {exc}",
            )
    return sorted(pending, key=lambda t: t.get_name())
