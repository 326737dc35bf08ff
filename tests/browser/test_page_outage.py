"""The page through a database that does not answer for a while: the settings read is a
503, the page says so, and it looks again by itself until the database answers, then takes
what it said back. Here the database "does not answer" because the settings' table is locked
by another session past the request's statement bound, which is what a request sees of a
frozen server (tests/processes/test_frozen_database.py freezes a real one)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import attrs
from playwright.async_api import expect

from deepmemory_service.platform.config import Settings
from tests.browser.test_deep_memory_page import TIMEOUT, open_page
from tests.conftest import Api


async def test_the_page_rides_out_a_database_that_does_not_answer(
    browser: Any, api_factory: Any, settings: Settings
) -> None:
    quick = attrs.evolve(
        settings, database=attrs.evolve(settings.database, statement_timeout_s=0.5)
    )
    api: Api = await api_factory(quick)
    user = uuid.uuid4()
    await api.ingest(user, 3)
    page = await open_page(browser, api, user)
    await expect(page.get_by_test_id("total-chunks")).to_have_text("3")
    admin = await asyncpg.connect(settings.database.url)
    try:
        lock = admin.transaction()
        await lock.start()
        await admin.execute("LOCK TABLE deep_memory_settings IN ACCESS EXCLUSIVE MODE")
        await page.reload()
        banner = page.get_by_test_id("connection")
        await expect(banner).to_contain_text("Database not answering", timeout=TIMEOUT)
        await lock.rollback()
        # no reload: the page looks again by itself
        await expect(page.get_by_test_id("settings-card")).to_be_visible(timeout=TIMEOUT)
        await expect(page.get_by_test_id("total-chunks")).to_have_text("3")
        await expect(banner).to_be_hidden()
    finally:
        await admin.close()
