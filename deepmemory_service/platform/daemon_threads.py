"""Blocking calls in daemon threads, awaited from the event loop.

For libraries that may block without end (deeplake retrying a request that never
answers): a daemon thread never holds the process open, and an await that gives up
leaves the thread to end on its own, its outcome going nowhere. The thread's setup
(`enter`), such as a per-thread deadline, runs in the thread before the call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def start(
    fn: Callable[..., T], *args: Any, name: str, enter: Callable[[], None] | None = None
) -> asyncio.Future[T]:
    """Starts `fn(*args)` in a daemon thread named `name` and returns a future of the
    running loop that its result or exception settles. Cancelling the future abandons
    the thread."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def run() -> None:
        if enter is not None:
            enter()
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, future.set_exception, exc)
        else:
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, future.set_result, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
