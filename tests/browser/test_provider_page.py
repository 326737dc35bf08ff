"""The page and a paid provider: what a generate will cost before it starts, what a run
spent, reuse of the last trained run's questions, and Cancel with a confirmation."""

from __future__ import annotations

import re
import uuid
from typing import Any

import attrs
from playwright.async_api import expect

from deepmemory_service.testing.fakes import ScriptedTrainer
from deepmemory_service.testing.standin_llm import STATS, StandinConfig, create_standin_app
from tests.browser.conftest import shot
from tests.browser.test_deep_memory_page import TIMEOUT, open_page
from tests.conftest import Api, paragraph
from tests.service.test_cancel import SlowGenerator


async def add_texts(api: Api, user: uuid.UUID, texts: list[str]) -> None:
    docs = [{"text": t} for t in texts]
    code, body = await api.call(
        "POST", "/documents", json={"user_id": str(user), "documents": docs}
    )
    assert code == 201, body


async def test_the_estimate_and_the_cost_of_a_run_and_then_only_new_chunks(
    browser: Any, api_factory: Any, aiohttp_server: Any, settings: Any
) -> None:
    standin = await aiohttp_server(create_standin_app(StandinConfig()))
    priced = attrs.evolve(
        settings,
        generator="llm",
        llm=attrs.evolve(
            settings.llm,
            base_url=str(standin.make_url("/v1")),
            price_input_per_mtok=0.15,
            price_output_per_mtok=0.60,
        ),
    )
    api: Api = await api_factory(priced, trainer=ScriptedTrainer())
    user = uuid.uuid4()
    await api.ingest(user, 12)
    page = await open_page(browser, api, user)
    estimate = page.get_by_test_id("estimate")
    await expect(estimate).to_have_text(
        re.compile(r"^12 chunks to generate: about 12 LLM calls, [\d,]+ tokens, \$0\.\d{4}\.$"),
        timeout=TIMEOUT,
    )
    await expect(page.get_by_test_id("regenerate")).to_be_hidden()  # nothing to reuse yet
    await shot(page, "estimate")

    await page.get_by_test_id("generate").click()
    await expect(page.get_by_test_id("run-status")).to_have_text("Generated", timeout=TIMEOUT)
    stats = standin.app[STATS]
    cost = (stats.prompt_tokens * 0.15 + stats.completion_tokens * 0.60) / 1e6
    await expect(page.get_by_test_id("run-usage")).to_have_text(
        f"12 LLM calls, {stats.prompt_tokens:,} prompt + {stats.completion_tokens:,} "
        f"completion tokens (${cost:.4f})"
    )
    await shot(page, "run-cost")
    await page.get_by_test_id("train").click()
    await expect(page.get_by_test_id("trained-chunks")).to_have_text("12", timeout=TIMEOUT)

    await add_texts(api, user, [paragraph(100 + i) for i in range(5)])
    await page.reload()
    await expect(estimate).to_have_text(
        re.compile(
            r"^5 chunks to generate \(12 chunks reused from your last trained run\): about 5 "
            r"LLM calls, [\d,]+ tokens, \$0\.\d{4}, under a minute\.$"
        ),
        timeout=TIMEOUT,
    )
    regenerate = page.get_by_test_id("regenerate")
    await expect(regenerate).to_be_visible()
    await regenerate.check()
    await expect(estimate).to_have_text(re.compile(r"^17 chunks to generate: about 17 LLM"))
    await regenerate.uncheck()
    await expect(estimate).to_contain_text("12 chunks reused")
    await shot(page, "estimate-incremental")

    stats.clear()
    await page.get_by_test_id("generate").click()
    await expect(page.get_by_test_id("run-status")).to_have_text("Generated", timeout=TIMEOUT)
    await expect(page.get_by_test_id("run-usage")).to_contain_text(
        "12 chunks reused from your last trained run, 5 generated · 5 LLM calls"
    )
    assert stats.calls == 5


async def test_cancel_asks_first_and_stops_the_run(browser: Any, api_factory: Any) -> None:
    gen = SlowGenerator(latency_s=0.1)
    api: Api = await api_factory(generator=gen)
    user = uuid.uuid4()
    await api.ingest(user, 150)
    page = await open_page(browser, api, user)
    await page.get_by_test_id("generate").click()
    await expect(page.get_by_test_id("run-status")).to_have_text("Generating", timeout=TIMEOUT)
    cancel = page.get_by_test_id("cancel")
    await expect(cancel).to_be_visible()

    await cancel.click()
    dialog = page.get_by_test_id("confirm-cancel-dialog")
    await expect(dialog).to_be_visible()
    await shot(page, "confirm-cancel")
    await page.get_by_test_id("confirm-keep").click()
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_test_id("run-status")).to_have_text("Generating")

    await cancel.click()
    await page.get_by_test_id("confirm-stop").click()
    # a cancelled run reads Cancelled (its status stays generating_failed), and where it
    # stopped is said once, plainly, not in red
    await expect(page.get_by_test_id("run-status")).to_have_text("Cancelled", timeout=TIMEOUT)
    said = page.get_by_test_id("run-error")
    await expect(said).to_have_text(
        re.compile(r"^Generation cancelled at chunk \d+/150 \(\d+/150 chunks done\)$")
    )
    await expect(said).to_have_class("note")
    await expect(page.get_by_test_id("notice")).to_be_hidden()
    await expect(page.get_by_test_id("block-message")).to_have_text(
        "The run was cancelled. Proceed to resume it, or delete the run, before generating again."
    )
    await expect(page.get_by_test_id("proceed")).to_be_visible()
    await expect(cancel).to_be_hidden()
    card = await page.get_by_test_id("generate").locator("xpath=ancestor::section").inner_text()
    assert card.count("Generation cancelled at chunk") == 1, card
    (row,) = await page.get_by_test_id("runs").locator("tbody tr").first.all_inner_texts()
    assert "Cancelled" in row, row
    await shot(page, "cancelled")
