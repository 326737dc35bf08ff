"""What the benchmarks share: a free loopback port and a fresh, migrated database."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import yarl

from deepmemory_service import migrations
from deepmemory_service.embedded_pg import EmbeddedPostgres

SYSTEM_PG = "postgresql://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def fresh_database(prefix: str) -> AsyncIterator[tuple[str, str]]:
    """(url, where): a database of our own, migrated, on the machine's PostgreSQL if it
    answers, else on an embedded one; dropped afterwards."""
    embedded, pg_dir = None, None
    try:
        admin = await asyncpg.connect(SYSTEM_PG, timeout=3)
        base, where = SYSTEM_PG, "fresh database on the machine's PostgreSQL"
    except (OSError, asyncpg.PostgresError):
        pg_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-pg-"))
        embedded = EmbeddedPostgres(pg_dir)
        base = await asyncio.to_thread(embedded.start)
        where = "fresh database on an embedded PostgreSQL"
        admin = await asyncpg.connect(base)
    name = f"{prefix.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    parsed = yarl.URL(base)
    # with_path drops the query, which carries pgserver's socket directory
    url = str(parsed.with_path(f"/{name}").with_query(parsed.query))
    try:
        await migrations.migrate_url(url)
        yield url, where
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if embedded:
            await asyncio.to_thread(embedded.stop)
        if pg_dir:
            shutil.rmtree(pg_dir, ignore_errors=True)
