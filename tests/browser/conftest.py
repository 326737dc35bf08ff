"""Headless Debian Chromium driven by Playwright; the browser is never downloaded."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# for every wait on the page, not only the long ones: the suite's first test (this folder
# sorts first) also pays Chromium's cold start and the service's first imports, and once
# missed Playwright's default 5 s on an early check in a full run
EXPECT_TIMEOUT_MS = 20_000


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():  # noqa: ASYNC240  # one stat before the browser starts
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium")
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)

    profile = tempfile.mkdtemp(prefix="dm-chromium-")
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            viewport={"width": 1100, "height": 900},
        )
        try:
            yield context
        finally:
            await context.close()
            shutil.rmtree(profile, ignore_errors=True)


def screenshot_path(name: str) -> str:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return str(SHOTS / f"{name}.png")


async def shot(page: Any, name: str) -> None:
    """A full-page screenshot with transitions finished, so it shows the state the test
    just checked rather than a progress bar caught mid-slide."""
    await page.screenshot(path=screenshot_path(name), full_page=True, animations="disabled")


async def phone_shot(page: Any, name: str, what: str) -> None:
    """On a phone's width the page must not scroll sideways (`what` names the part under
    test); then a screenshot of it."""
    await page.set_viewport_size({"width": 375, "height": 740})
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"{what} scrolls sideways on a phone"
    await shot(page, name)
