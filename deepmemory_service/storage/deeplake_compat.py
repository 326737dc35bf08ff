"""The one place that imports deeplake 3.9.x, after quieting what it does at import time.

On import deeplake asks PyPI for its newest version and starts a telemetry reporter.
Neither has any business in a service that may run offline: the reporter honours
humbug's `BUGGER_OFF`, and the version check is skipped while its day-long cache is fresh.

Its spinner, drawn on stderr around any call slower than 2 s, is turned off: a service's
stderr is its log.

Its S3 module also calls `nest_asyncio.apply()` at import, for Jupyter. That replaces
asyncio's C `Task` with the pure-Python one and patches the event loop, for the whole
process: every request, task step and SSE write gets slower (measured: the loop's time
went to nest_asyncio's `_run_once`). deeplake runs in executor threads here, where no
loop is running, so nothing needs nesting and the call is made a no-op.

deeplake is blocking, and its REST client (Activeloop's API: cloud datasets, Deep Memory)
retries a connection error forever without pausing. So cloud calls run in a daemon thread
(`in_daemon_thread`) under a deadline, and `install_request_guard` wraps the `requests`
module the client uses: connection errors get a short backoff and, after a few, an
exception the retry loop does not catch; past the caller's deadline every further request
fails at once. An abandoned thread stops at its next request instead of spinning or
holding the process open.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from deepmemory_service.platform import daemon_threads
from deepmemory_service.platform.retry import RetryPolicy

T = TypeVar("T")

# the deeplake pinned in pyproject.toml
VERSION = "3.9.52"


def _quiet() -> None:
    os.environ.setdefault("BUGGER_OFF", "true")
    cache = Path(os.path.expanduser("~/.activeloop/pypi_version.json"))
    try:
        ours = cache.exists() and json.loads(cache.read_text())[0] == VERSION
        if not ours or time.time() - json.loads(cache.read_text())[1] > 3600:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps([VERSION, time.time()]))
    except (OSError, ValueError, IndexError):
        # a read-only home only costs deeplake's own (time-limited) version check
        pass


def _no_nesting() -> None:
    try:
        nest_asyncio: Any = importlib.import_module("nest_asyncio")
    except ImportError:
        return
    nest_asyncio.apply = lambda *_args, **_kwargs: None


def load() -> ModuleType:
    _quiet()
    _no_nesting()
    import deeplake

    deeplake.constants.SPINNER_ENABLED = False
    module: ModuleType = deeplake
    return module


# deeplake's client retries a connection error forever and at once: the guard pauses
# 0.4 s, then 0.8 s, and breaks the loop at the third failure in a row
CONNECT_RETRY = RetryPolicy(attempts=3, base_s=0.2, max_s=1.6, jitter=False)


class ActiveloopUnreachable(Exception):
    """Raised inside deeplake's client when the service cannot be reached in time."""


_guard = threading.local()
_guard_lock = threading.Lock()


class _GuardedRequests:
    """Stands in for the `requests` module inside `deeplake.client.client`."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        deadline: float | None = getattr(_guard, "deadline", None)
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ActiveloopUnreachable(f"no time left for {method} {url}")
            timeout = kwargs.get("timeout")
            kwargs["timeout"] = remaining if timeout is None else min(float(timeout), remaining)
        try:
            response = self._real.request(method, url, **kwargs)
        except self._real.exceptions.ConnectionError as exc:
            failures = getattr(_guard, "failures", 0) + 1
            _guard.failures = failures
            if failures >= CONNECT_RETRY.attempts:
                _guard.failures = 0
                raise ActiveloopUnreachable(f"cannot connect to {_origin(url)}") from exc
            pause = CONNECT_RETRY.delay(failures)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            raise  # deeplake's loop catches this one and tries again
        _guard.failures = 0
        return response


def _origin(url: str) -> str:
    match = re.match(r"[a-z]+://[^/]+", url)
    return match.group(0) if match else url


def _client_module() -> Any:
    load()
    import deeplake.client.client as client_module

    return client_module


def install_request_guard() -> None:
    """Bound deeplake's REST client (idempotent, process-wide)."""
    client_module = _client_module()
    with _guard_lock:
        if not isinstance(client_module.requests, _GuardedRequests):
            client_module.requests = _GuardedRequests(client_module.requests)


def use_endpoint(url: str | None) -> None:
    """Send deeplake's REST calls to `url` (a stand-in, a proxy); None: Activeloop's own.

    deeplake has no setting for this: its client reads the module constant
    `HUB_REST_ENDPOINT` (copied from `deeplake.client.config`) on every request.
    """
    client_module = _client_module()
    import deeplake.client.config as client_config

    client_module.HUB_REST_ENDPOINT = url.rstrip("/") if url else client_config.HUB_REST_ENDPOINT


async def in_daemon_thread(fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
    """`fn(*args)` in a daemon thread whose deeplake requests stop at `deadline`.

    Cancelling the await abandons the thread; being a daemon it never holds the process
    open, and the request guard makes it give up at its next request.
    """

    def enter() -> None:
        _guard.deadline = deadline
        _guard.failures = 0

    name = f"deeplake:{getattr(fn, '__name__', 'call')}"
    return await daemon_threads.start(fn, *args, name=name, enter=enter)


@functools.cache
def atomic_local_provider() -> type[Any]:
    """deeplake's `LocalProvider` with atomic, durable writes: each file is written beside
    its name, flushed to disk and renamed over it. A write never changes an existing file
    in place, so a file hard-linked into an older version of a store stays as it was, and
    a crash leaves a whole old file or a whole new one, never a torn one."""
    from deeplake.core.storage.local import LocalProvider

    class AtomicLocalProvider(LocalProvider):  # type: ignore[misc]  # deeplake is untyped
        # a set: files written are named there and synced by whoever set it (all at once,
        # before anything may rely on them: `local_versions`); None: each synced as written
        deferred: set[str] | None = None

        def __init__(self, root: str, files: set[str] | None = None) -> None:
            # `files`: the folder's files as `_all_keys` lists them, known to the caller
            # (it just made the folder): deeplake's own __init__ walks the folder for them,
            # which grows with the store and cost more than making the folder
            self._given = files
            super().__init__(root)

        def _all_keys(self, refresh: bool = False) -> set[str]:
            given: set[str] | None = getattr(self, "_given", None)
            self._given = None
            if given is not None and not refresh:
                self.files = given  # __init__'s listing, the one call that finds none yet
                return given
            keys: set[str] = super()._all_keys(refresh)
            return keys

        def __setitem__(self, path: str, value: bytes) -> None:
            self.check_readonly()
            full = self._check_is_file(path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            tmp = f"{full}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                with open(tmp, "wb") as file:
                    file.write(value)
                    if self.deferred is None:
                        file.flush()
                        os.fsync(file.fileno())
                os.replace(tmp, full)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
            if self.deferred is not None:
                self.deferred.add(full)
            if self.files is not None:
                self.files.add(path)

    return AtomicLocalProvider


def open_local(root: str, *, read_only: bool, files: set[str] | None = None) -> Any:
    """The dataset in the folder `root`, opened without deeplake's `load` (whose existence
    checks, reporting and locks a versioned local store does not need); writes go through
    `atomic_local_provider`. `files`: the folder's files (paths relative to `root`, with
    "/"), when the caller knows them; else they are listed."""
    load()
    from deeplake.core.dataset import Dataset
    from deeplake.util.cache_chain import generate_chain

    storage = generate_chain(atomic_local_provider()(root, files), 256 * 2**20, 0, root)
    if read_only:
        storage.enable_readonly()
    return Dataset(
        storage=storage, path=root, read_only=read_only, verbose=False, lock_enabled=False
    )
