"""Named background tasks of an app, watched together: a crash is logged and the task
restarted after a pause; shutdown cancels them all and waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import attrs
import structlog

log = structlog.get_logger(__name__)


@attrs.define
class SideTasks:
    _tasks: dict[str, asyncio.Task[None]] = attrs.field(factory=dict)
    restarts: dict[str, int] = attrs.field(factory=dict)

    def start(
        self, name: str, factory: Callable[[], Awaitable[None]], restart_after_s: float = 1.0
    ) -> None:
        async def watched() -> None:
            while True:
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    log.exception("side task crashed; restarting", task=name)
                    await asyncio.sleep(restart_after_s)

        self._tasks[name] = asyncio.create_task(watched(), name=name)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def names(self) -> list[str]:
        return [n for n, t in self._tasks.items() if not t.done()]
