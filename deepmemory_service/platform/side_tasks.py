"""Named background tasks of an app, watched together: a crash is logged and the task
restarted after a pause that grows while it keeps failing; shutdown cancels them all and
waits (bounded: stopping.cancel_all)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import attrs
import structlog

from deepmemory_service.platform.retry import RetryPolicy
from deepmemory_service.platform.stopping import PATIENCE_S, cancel_all

log = structlog.get_logger(__name__)
MAX_PAUSE_S = 30.0


@attrs.define
class SideTasks:
    # how long a cancelled task may take to end before it is cancelled again
    patience_s: float = PATIENCE_S
    _tasks: dict[str, asyncio.Task[None]] = attrs.field(factory=dict)

    def start(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        restart_after_s: float = 1.0,
        *,
        expected: tuple[type[BaseException], ...] = (),
    ) -> None:
        """Runs `factory()` as task `name`, again after a pause when it fails. The pause
        doubles while it keeps failing (up to `MAX_PAUSE_S`), so an outage is a few log lines,
        not a stream; an `expected` error (the database is away) is one line, no traceback."""
        policy = RetryPolicy(attempts=1, base_s=restart_after_s, max_s=MAX_PAUSE_S, jitter=False)

        async def watched() -> None:
            failures = 0
            while True:
                began = time.monotonic()
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # a task that ran for a while before failing starts its backoff afresh
                    failures = 0 if time.monotonic() - began > MAX_PAUSE_S else failures
                    pause = policy.delay(failures)
                    failures += 1
                    if isinstance(exc, expected):
                        log.warning(
                            "side task stopped; restarting",
                            task=name,
                            error=f"{type(exc).__name__}: {exc}",
                            pause_s=pause,
                        )
                    else:
                        log.exception("side task crashed; restarting", task=name, pause_s=pause)
                    await asyncio.sleep(pause)

        self._tasks[name] = asyncio.create_task(watched(), name=name)

    async def stop(self) -> None:
        await cancel_all(self._tasks.values(), "side tasks", patience_s=self.patience_s)
        self._tasks.clear()
