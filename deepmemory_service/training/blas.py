"""How many threads numpy's BLAS may use: set once for the process, by the trainer.

On a small machine BLAS threads compete with the event loop and the executor's threads for
the same cores (measured on two cores: one training took 42 s with OpenBLAS's default
threads and 6 s with one, the same model either way)."""

from __future__ import annotations

import os

from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # ships no hints


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def blas_threads(configured: int) -> int:
    """`configured`, or for 0: one thread on two cores or fewer, else half the cores."""
    if configured > 0:
        return configured
    available = cores()
    return 1 if available <= 2 else available // 2


def limit_blas(configured: int) -> int:
    """Limits BLAS to `blas_threads(configured)` threads for the whole process; returns it."""
    threads = blas_threads(configured)
    threadpool_limits(limits=threads, user_api="blas")
    return threads
