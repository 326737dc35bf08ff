"""Numbered SQL migrations, applied in order and recorded in `schema_migrations`."""

from __future__ import annotations

import re
from importlib import resources

import structlog
from attrs import frozen

from deepmemory_service.db import database

log = structlog.get_logger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@frozen
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    folder = resources.files("deepmemory_service.db").joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: database.Conn) -> list[Migration]:
    """Applies what is missing, each migration in its own transaction; returns those applied."""
    async with conn.migration_lock():
        done = await conn.applied_migrations()
        applied = []
        for migration in available():
            if migration.version in done:
                continue
            await conn.apply_migration(migration.version, migration.name, migration.sql)
            log.info("migration applied", version=migration.version, name=migration.name)
            applied.append(migration)
        return applied


async def migrate_url(url: str) -> list[Migration]:
    async with database.connect(url) as conn:
        return await migrate(conn)
