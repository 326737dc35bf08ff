"""CPU-bound work of uploads in a worker process, off the service's event loop.

Hashing texts into vectors and writing a local store version are Python through and
through (deeplake's writes are mostly Python). In an executor thread they hold the GIL,
and every request of every other user waits for it between its steps: while one user
uploaded back to back, other users' `GET settings` p99 went from ~20 ms to ~270 ms on the
project's 2-core machine. In a process of their own they compete only for a core.

One worker process per service process, started on first use (forkserver: a clean process,
not a fork of this threaded one) and warmed at start-up, so the first upload does not pay
for importing deeplake. Where processes cannot be started, a thread does the work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")

# the worker's scheduling priority, below the service process's
NICE = 10
_lock = threading.Lock()
_pool: concurrent.futures.Executor | None = None


def _executor() -> concurrent.futures.Executor:
    global _pool
    with _lock:
        if _pool is None:
            context = multiprocessing.get_context("forkserver")
            _pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=context, initializer=_lower_priority
            )
        return _pool


def _replace(broken: concurrent.futures.Executor, *, threads: bool = False) -> None:
    global _pool
    with _lock:
        if _pool is broken:
            _pool = concurrent.futures.ThreadPoolExecutor(1, "cpu") if threads else None
    broken.shutdown(wait=False, cancel_futures=True)


async def run(call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` in the worker (a top-level function, its arguments picklable). A worker
    that died (killed, out of memory) is replaced, and the call made once more."""
    loop = asyncio.get_running_loop()
    for attempt in (1, 2):
        executor = _executor()
        try:
            return await loop.run_in_executor(executor, call, *args)
        except BrokenProcessPool:
            _replace(executor)
            if attempt == 2:
                raise
            log.warning("upload worker process died; starting another")
        except OSError as exc:
            if not isinstance(executor, concurrent.futures.ProcessPoolExecutor):
                raise
            # no processes here (no semaphores, a sandbox): a thread does the work
            log.warning("no worker process for uploads; a thread does their work", error=str(exc))
            _replace(executor, threads=True)
    raise AssertionError("unreachable: the second attempt returns or raises")


def _lower_priority() -> None:
    # bulk work yields the cores to the requests the service process answers
    with contextlib.suppress(OSError):
        os.nice(NICE)


def _ready() -> None:
    # the imports a first upload would otherwise wait for
    from deepmemory_service.storage import deeplake_compat, local_versions  # noqa: F401

    deeplake_compat.load()


def warm() -> None:
    """Starts the worker and its imports now, in the background."""
    _executor().submit(_ready)
