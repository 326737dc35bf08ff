"""The embedded PostgreSQL (pgserver) used when no database URL is configured."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


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
            from pgserver.postgres_server import get_server

            self.pgdata.mkdir(parents=True, exist_ok=True)
            self._server = get_server(self.pgdata, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        log.info("embedded postgres ready", pgdata=str(self.pgdata))
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
