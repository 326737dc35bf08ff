"""CPU-bound work of uploads in a worker process, off the service's event loop.

Hashing texts into vectors and writing a local store version are Python through and
through (deeplake's writes are mostly Python). In an executor thread they hold the GIL,
and every request of every other user waits for it between its steps: while one user
uploaded back to back, other users' `GET settings` p99 went from ~20 ms to ~270 ms on the
project's 2-core machine. In a process of their own they compete only for a core.

Worker processes per service process for the two lanes of an upload's pipeline: `EMBED`
hashes texts into vectors (a process per core, up to two), `WRITE` writes store versions
(one process, so its calls run in order, and a writer begun there is there for the calls
that follow: `local_versions`). While one part of an upload is written, the next ones are
embedded; an upload of one user writes while the next one embeds. Started
on first use (forkserver: a clean process, not a fork of this threaded one) and warmed at
start-up, so the first upload does not pay for importing deeplake. Where processes cannot
be started, a thread does a lane's work.
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
EMBED = "embed"
WRITE = "write"
_lock = threading.Lock()
_pools: dict[str, concurrent.futures.Executor] = {}


# processes of each lane: writes in order in one; embedding on every core (an upload's
# parts embedded side by side, up to `EMBED_WORKERS` at once)
EMBED_WORKERS = max(1, min(2, os.cpu_count() or 1))
WORKERS = {EMBED: EMBED_WORKERS, WRITE: 1}


def _executor(lane: str) -> concurrent.futures.Executor:
    with _lock:
        pool = _pools.get(lane)
        if pool is None:
            context = multiprocessing.get_context("forkserver")
            pool = _pools[lane] = concurrent.futures.ProcessPoolExecutor(
                max_workers=WORKERS[lane], mp_context=context, initializer=_lower_priority
            )
        return pool


def _replace(lane: str, broken: concurrent.futures.Executor, *, threads: bool = False) -> None:
    with _lock:
        if _pools.get(lane) is broken:
            if threads:
                _pools[lane] = concurrent.futures.ThreadPoolExecutor(1, f"cpu-{lane}")
            else:
                del _pools[lane]
    broken.shutdown(wait=False, cancel_futures=True)


async def run(call: Callable[..., T], *args: Any, lane: str = WRITE) -> T:
    """`call(*args)` in `lane`'s worker (a top-level function, its arguments picklable). A
    worker that died (killed, out of memory) is replaced, and the call made once more."""
    loop = asyncio.get_running_loop()
    for attempt in (1, 2):
        executor = _executor(lane)
        try:
            return await loop.run_in_executor(executor, call, *args)
        except BrokenProcessPool:
            _replace(lane, executor)
            if attempt == 2:
                raise
            log.warning("upload worker process died; starting another")
        except OSError as exc:
            if not isinstance(executor, concurrent.futures.ProcessPoolExecutor):
                raise
            # no processes here (no semaphores, a sandbox): a thread does the work
            log.warning("no worker process for uploads; a thread does their work", error=str(exc))
            _replace(lane, executor, threads=True)
    raise AssertionError("unreachable: the second attempt returns or raises")


def _lower_priority() -> None:
    # bulk work yields the cores to the requests the service process answers
    with contextlib.suppress(OSError):
        os.nice(NICE)


def _ready() -> None:
    # the imports a first upload would otherwise wait for
    from deepmemory_service.storage import deeplake_compat, local_versions  # noqa: F401

    deeplake_compat.load()


def _embed_ready() -> None:
    # what hashing needs first (embedders.py itself is imported by the first call's pickle)
    import numpy  # noqa: F401

    from deepmemory_service.text import queries  # noqa: F401


def warm() -> None:
    """Starts the workers and their imports now, in the background."""
    _executor(WRITE).submit(_ready)
    _executor(EMBED).submit(_embed_ready)
