"""The page with the service stopped and started again under it: a real `serve` backend
process gets SIGTERM mid-run while the page is open (through a gateway in front of it, as a
deployment has), and the page shows the interrupted run as failed, with Proceed, within
seconds of the backend being back, without a reload."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from playwright.async_api import expect

from deepmemory_service.app import create_app
from deepmemory_service.gateway.auth import mint_token
from deepmemory_service.platform.config import Settings, load_settings
from deepmemory_service.testing.standin_llm import CONFIG, STATS
from tests.browser.conftest import shot
from tests.cluster import TOKEN, ingest
from tests.conftest import SECRET_KEY, wait_generated
from tests.processes.test_instances import sigterm_and_exit

pytestmark = pytest.mark.browser
# what the page may take to show the run as it is once the backend answers again: the
# brief's bound; the page's own retries are a few seconds apart
BACK_WITHIN_S = 30


@pytest.fixture
async def gateway(
    aiohttp_server: Any, tmp_path: Any
) -> Callable[[str], Awaitable[tuple[Any, Settings]]]:
    """`start(backend_url)`: a gateway (role gateway) in this process in front of a backend
    process, as `serve --role gateway --backend-url` runs one."""

    async def start(backend_url: str) -> tuple[Any, Settings]:
        settings = load_settings(
            {},
            overrides={
                "data_dir": str(tmp_path / "gateway"),
                "service_token": TOKEN,
                "secret_key": SECRET_KEY,
                "http.role": "gateway",
                "http.backend_url": backend_url,
            },
        )
        return await aiohttp_server(create_app(settings)), settings

    return start


async def test_a_run_lost_to_a_restart_shows_as_failed_with_proceed_without_a_reload(
    browser: Any, cluster: Any, gateway: Any
) -> None:
    start, _, standin = cluster
    backend = await start()
    port = int(backend.url.rsplit(":", 1)[1])
    server, settings = await gateway(backend.url)
    user = uuid.uuid4()
    await ingest(backend, user, 120)
    standin.app[CONFIG].latency_ms = 150

    page = browser.pages[0] if browser.pages else await browser.new_page()
    token = mint_token(settings, user, 600)
    await page.goto(str(server.make_url(f"/login?token={token}")))
    await page.get_by_test_id("confirm-login").click()
    await expect(page.get_by_test_id("settings-card")).to_be_visible()
    await page.get_by_test_id("generate").click()
    status = page.get_by_test_id("run-status")
    await expect(status).to_have_text("Generating")
    # the status can show before the run's id does (they come from two replies)
    run_id_shown = page.get_by_test_id("run-id")
    await expect(run_id_shown).to_have_text(re.compile(r"^[0-9a-f-]{36}$"))
    run_id = await run_id_shown.inner_text()
    await wait_generated(backend, user, run_id, 8)
    await expect(page.get_by_test_id("cancel")).to_be_visible()
    # the history's row moves with the live card: its chunks as the bar's
    history = page.get_by_test_id("runs").locator("tbody tr").first
    await expect(history).to_contain_text("Generating")
    await page.wait_for_function(
        r"""() => {
            const text = document.getElementById("progress-text").textContent;
            const shown = (text.match(/for ([\d,]+)\/120 chunks/) || [])[1];
            const row = document.querySelector("#runs tbody tr").cells[2].textContent;
            return shown !== undefined && shown !== "0" && row === `${shown}/120`;
        }"""
    )
    await shot(page, "restart-1-generating")

    # a real SIGTERM: the backend fails its run and ends its streams, then exits
    await sigterm_and_exit(backend)
    # the stream's last word is shown at once; the page says the service is away and keeps
    # looking, and nothing offers to cancel a run that is no longer running
    await expect(status).to_have_text("Generation failed")
    await expect(page.get_by_test_id("cancel")).to_be_hidden()
    await expect(page.get_by_test_id("run-error")).to_contain_text("the service shut down")
    await expect(history).to_contain_text("Generation failed")
    connection = page.get_by_test_id("connection")
    await expect(connection).to_be_visible()
    await expect(connection).to_contain_text("The service cannot be reached")
    await shot(page, "restart-2-backend-down")

    # the backend again, on the same port; the page sees it by itself
    again = await start(port=port)
    back = time.monotonic()
    await expect(connection).to_be_hidden(timeout=BACK_WITHIN_S * 1000)
    await expect(page.get_by_test_id("proceed")).to_be_visible(timeout=BACK_WITHIN_S * 1000)
    took = time.monotonic() - back
    assert took < BACK_WITHIN_S, f"the page took {took:.1f} s to see the service back"
    await expect(status).to_have_text("Generation failed")
    run = await again.run(user, run_id)
    assert run["status"] == "generating_failed"
    # every call the provider saw is counted, those the shutdown cut off in flight too (at
    # most the run's four workers' calls may have been counted without reaching it)
    seen = standin.app[STATS].calls
    assert seen <= run["llm_calls"] <= seen + 4, (seen, run["llm_calls"])
    await expect(page.get_by_test_id("run-error")).to_have_text(run["error_message"])
    await shot(page, "restart-3-back-with-proceed")

    # and Proceed finishes the run
    standin.app[CONFIG].latency_ms = 0
    await page.get_by_test_id("proceed").click()
    await expect(status).to_have_text("Generated", timeout=60_000)
    await again.until(user, run_id, "generated")
    await expect(page.get_by_test_id("runs").locator("tbody tr").first).to_contain_text("Generated")
    await shot(page, "restart-4-proceeded")
