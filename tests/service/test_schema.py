"""A database built by the migrations equals one built from sql/schema.sql."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

import asyncpg

from deepmemory_service.db import migrations

CATALOG = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = 'public'
          AND table_name <> 'schema_migrations'
        ORDER BY table_name, column_name""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'schema_migrations'
        ORDER BY tablename, indexname""",
    "constraints": """
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' AND c.conrelid::regclass::text <> 'schema_migrations'
        ORDER BY 1, 2""",
}


async def catalog(url: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in CATALOG.items()}
    finally:
        await conn.close()


async def test_migrations_build_the_schema_file(fresh_db: Callable[..., Awaitable[str]]) -> None:
    migrated, from_file = await fresh_db(), await fresh_db()
    applied = await migrations.migrate_url(migrated)
    assert [m.version for m in applied] == [m.version for m in migrations.available()]
    conn = await asyncpg.connect(from_file)
    try:
        schema = resources.files("deepmemory_service.db").joinpath("sql/schema.sql").read_text()
        await conn.execute(schema)
    finally:
        await conn.close()

    built, expected = await catalog(migrated), await catalog(from_file)
    assert built["columns"], "the migrations created no tables"
    assert built == expected


async def test_migrating_twice_applies_nothing(fresh_db: Callable[..., Awaitable[str]]) -> None:
    url = await fresh_db()
    assert await migrations.migrate_url(url)
    assert await migrations.migrate_url(url) == []
