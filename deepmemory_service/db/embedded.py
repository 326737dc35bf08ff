"""The embedded PostgreSQL (pgserver) used when no database URL is configured, and the
watchdog that restarts it if it dies under a running service."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import structlog

from deepmemory_service.platform.retry import RetryPolicy, retry

log = structlog.get_logger(__name__)
# pgserver gives `pg_ctl start` a fixed 10 s; on a loaded machine the server can need more
START_TIMEOUT_S = 120.0
# a server that died is started again at once, then after 0.5, 1, 2 and 4 s; then the service
# gives up and exits non-zero, so that whatever supervises it starts it afresh
RESTART_POLICY = RetryPolicy(attempts=5, base_s=0.5, max_s=4.0, jitter=False)
WATCH_S = 1.0


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # pgserver keeps its lock file in a runtime dir; without XDG_RUNTIME_DIR (a
        # service, a container) platformdirs falls back to /tmp and warns at import
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        from pgserver import postgres_server

    return postgres_server


def _running(pid: int) -> bool:
    """A live process: not gone, and not a zombie its parent has yet to reap."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _why(exc: BaseException) -> str:
    """A failed start in one line: pg_ctl's own words when it said something."""
    said = getattr(exc, "stderr", None) or getattr(exc, "output", None)
    if isinstance(said, bytes):
        said = said.decode(errors="replace")
    detail = said.strip().splitlines()[-1] if isinstance(said, str) and said.strip() else str(exc)
    return f"{type(exc).__name__}: {detail[:300]}"


class EmbeddedPostgres:
    """A PostgreSQL server in `data_dir/postgres`, started once per data directory.

    pgserver shares one server between the handles of every process on the same data
    directory (their pids are listed in `.handle_pids.json`) and stops it when the last
    handle is closed.
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    def start(self) -> str:
        pg = _pgserver()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._forget_dead_handles()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self._server = pg.get_server(self.pgdata, cleanup_mode="stop")
                break
            except subprocess.TimeoutExpired:
                # pg_ctl gave up waiting, not the server: it goes on starting. pgserver has
                # cached the half-made handle; drop it and ask again once the server is up
                pg.PostgresServer._instances.pop(self.pgdata.resolve(), None)
                if time.monotonic() > deadline:
                    raise
                log.warning(
                    "embedded postgres slow to start; still waiting", pgdata=str(self.pgdata)
                )
                self._wait_ready(deadline)
        uri: str = self._server.get_uri()
        log.info("embedded postgres ready", pgdata=str(self.pgdata))
        return uri

    def _wait_ready(self, deadline: float) -> None:
        """Until the server pg_ctl left starting is ready, or is gone (then pg_ctl is run
        again by the caller)."""
        from pgserver.utils import PostmasterInfo

        while time.monotonic() < deadline:
            try:
                info = PostmasterInfo.read_from_pgdata(self.pgdata.resolve())
            except (AssertionError, ValueError, OSError):
                time.sleep(0.1)  # postmaster.pid is being written
                continue
            if info is None or not info.is_running() or info.status == "ready":
                return
            time.sleep(0.1)

    def _forget_dead_handles(self) -> None:
        """Drops the pids of processes that died without closing their handle (kill -9):
        pgserver would otherwise count them forever and never stop the server."""
        from pgserver.utils import DiskList

        pg = _pgserver()
        with pg.PostgresServer._lock:
            handles = DiskList(self.pgdata.resolve() / ".handle_pids.json")
            try:
                pids = handles.get()
                alive = [pid for pid in pids if _running(pid)]
                if alive != pids:
                    handles.put(alive)
            except (OSError, ValueError) as exc:
                log.warning("embedded postgres: cannot read its list of handles", error=str(exc))
                return
            if alive != pids:
                log.info(
                    "embedded postgres: forgot the handles of processes that died",
                    pids=sorted(set(pids) - set(alive)),
                )

    def alive(self) -> bool:
        """The server this handle started (or joined) is running."""
        pid = self._server.get_pid() if self._server is not None else None
        return pid is not None and _running(pid)

    def restart(self) -> str:
        """Starts the server again after it died; its URI stays the same (its socket
        lives in the data directory)."""
        pg = _pgserver()
        quiet = logging.getLogger("pgserver")
        level = quiet.level
        # pgserver logs each failed try with the server's whole log; the watchdog says it once
        quiet.setLevel(logging.CRITICAL)
        try:
            with pg.PostgresServer._lock:
                # another process on this data directory may have restarted it already
                try:
                    self._server.ensure_postgres_running()
                except subprocess.TimeoutExpired:
                    # as at start: pg_ctl's fixed wait ran out, not the server, which goes on
                    # starting (a crash recovery on a loaded machine); once it is ready this
                    # joins it, instead of spending the restart's tries on starting it again
                    self._wait_ready(time.monotonic() + START_TIMEOUT_S)
                    self._server.ensure_postgres_running()
        finally:
            quiet.setLevel(level)
        if not self.alive():
            # pgserver took the dead server's pid for a live one: it was not reaped yet
            raise RuntimeError("the old server's process is still there; trying again")
        uri: str = self._server.get_uri()
        return uri

    async def watch(self, on_give_up: Callable[[], None]) -> None:
        """Restarts the server when it dies, with bounded retries; calls `on_give_up` when
        it cannot. One log line either way."""
        while True:
            await asyncio.sleep(WATCH_S)
            if await asyncio.to_thread(self.alive):
                continue
            started = time.monotonic()
            try:
                await retry(
                    lambda: asyncio.to_thread(self.restart),
                    RESTART_POLICY,
                    retry_on=lambda exc: True,
                )
            except Exception as exc:
                log.error(
                    "embedded postgres died and could not be restarted; stopping the service "
                    "(exit status 1) so that its supervisor starts it afresh",
                    pgdata=str(self.pgdata),
                    tries=RESTART_POLICY.attempts,
                    error=_why(exc),
                )
                on_give_up()
                return
            log.warning(
                "embedded postgres died; restarted it",
                pgdata=str(self.pgdata),
                took_s=round(time.monotonic() - started, 1),
            )

    def stop(self) -> None:
        if self._server is not None:
            # a process killed with -9 left its pid behind: it must not keep the server up
            self._forget_dead_handles()
            self._server.cleanup()
            self._server = None
