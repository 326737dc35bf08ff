"""The embedded PostgreSQL when `pg_ctl start` gives up before the server is ready."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pgserver._commands as pgserver_commands
import pgserver.postgres_server as pgserver_module
import pytest
from structlog.testing import capture_logs

from deepmemory_service.embedded_pg import EmbeddedPostgres


async def test_a_server_slower_than_pg_ctls_timeout_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pg_ctl = pgserver_commands.pg_ctl
    starts: list[list[str]] = []

    def slow_machine(args: list[str], **kwargs: Any) -> Any:
        if args[-1] != "start":
            return real_pg_ctl(args, **kwargs)
        starts.append(args)
        # as on a loaded machine: the server is launched, and pg_ctl's fixed wait runs out
        # before it is ready
        real_pg_ctl([a for a in args if a != "-w"], **kwargs)
        raise subprocess.TimeoutExpired("pg_ctl", kwargs.get("timeout", 10))

    monkeypatch.setattr(pgserver_module, "pg_ctl", slow_machine)
    embedded = EmbeddedPostgres(tmp_path)
    with capture_logs() as logs:
        url = embedded.start()
    try:
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        # pg_ctl ran once: the second look found the server it had started, now ready
        assert len(starts) == 1
        assert [e["event"] for e in logs] == [
            "embedded postgres slow to start; still waiting",
            "embedded postgres ready",
        ]
    finally:
        embedded.stop()
    # stopped with the last handle, as without the slow start
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()
