"""The embedded PostgreSQL (pgserver) used when no database URL is configured."""

from __future__ import annotations

import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)
# pgserver gives `pg_ctl start` a fixed 10 s; on a loaded machine the server can need more
START_TIMEOUT_S = 120.0


class EmbeddedPostgres:
    """A PostgreSQL server in `data_dir/postgres`, started once per data directory.

    pgserver shares one server between the handles of every process on the same data
    directory and stops it when the last handle is closed.
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            # pgserver keeps its lock file in a runtime dir; without XDG_RUNTIME_DIR (a
            # service, a container) platformdirs falls back to /tmp and warns at import
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            from pgserver.postgres_server import PostgresServer, get_server

        self.pgdata.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self._server = get_server(self.pgdata, cleanup_mode="stop")
                break
            except subprocess.TimeoutExpired:
                # pg_ctl gave up waiting, not the server: it goes on starting. pgserver has
                # cached the half-made handle; drop it and ask again once the server is up
                PostgresServer._instances.pop(self.pgdata.resolve(), None)
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

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
