"""The Deep Memory page in a real browser: log in, generate, recover, delete, and the
messages a user sees for every state."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import attrs
from playwright.async_api import expect

from deepmemory_service.gateway.auth import mint_token
from deepmemory_service.testing.fakes import ControlledGenerator, ScriptedTrainer
from tests.browser.conftest import phone_shot, shot
from tests.conftest import Api
from tests.service.test_runs_api import force_status
from tests.service.test_training import NOISE, NoisyGenerator

TIMEOUT = 20_000


async def open_page(browser: Any, api: Api, user: uuid.UUID) -> Any:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    token = mint_token(api.services.settings, user, 600)
    await follow_login_link(page, api, token, user)
    await expect(page.get_by_test_id("settings-card")).to_be_visible(timeout=TIMEOUT)
    return page


async def follow_login_link(page: Any, api: Api, token: str, user: uuid.UUID) -> None:
    """A login link shows the account it opens; a person's click logs in."""
    await page.goto(str(api.client.make_url(f"/login?token={token}")))
    await expect(page.get_by_test_id("link-account")).to_contain_text(str(user))
    await page.get_by_test_id("confirm-login").click()
    await expect(page).to_have_url(str(api.client.make_url("/deep-memory")))
    await expect(page.get_by_test_id("account")).to_have_text(f"Logged in as user {user}")


async def test_generate_and_watch_the_bar_reach_the_end(browser: Any, api_factory: Any) -> None:
    gen = ControlledGenerator()
    api: Api = await api_factory(generator=gen, trainer=ScriptedTrainer())
    user = uuid.uuid4()
    await api.ingest(user, 40)
    page = await open_page(browser, api, user)
    await expect(page.get_by_test_id("total-chunks")).to_have_text("40")
    generate = page.get_by_test_id("generate")
    await expect(generate).to_be_enabled()
    gen.hold()
    await generate.click()
    await expect(page.get_by_test_id("run-status")).to_have_text("Generating", timeout=TIMEOUT)
    await expect(generate).to_be_disabled()
    gen.release()
    bar = page.get_by_test_id("progress")
    await expect(bar).to_have_attribute("aria-valuenow", "100", timeout=TIMEOUT)
    await expect(page.get_by_test_id("run-status")).to_have_text("Generated", timeout=TIMEOUT)
    await expect(page.get_by_test_id("block-message")).to_have_text(
        "Training data is ready. Train it before generating again."
    )
    await shot(page, "generated")

    await page.get_by_test_id("train").click()
    await expect(page.get_by_test_id("search-card")).to_be_visible(timeout=TIMEOUT)
    await expect(page.get_by_test_id("trained-chunks")).to_have_text("40")
    await expect(generate).to_be_enabled()
    await shot(page, "completed")


async def test_a_failed_run_shows_its_error_and_proceeds_to_the_end(
    browser: Any, api_factory: Any
) -> None:
    gen = ControlledGenerator(fail_after=5)
    api: Api = await api_factory(generator=gen)
    user = uuid.uuid4()
    await api.ingest(user, 20)
    page = await open_page(browser, api, user)
    await page.get_by_test_id("generate").click()
    error = page.get_by_test_id("run-error")
    await expect(error).to_contain_text("Question generation failed", timeout=TIMEOUT)
    await expect(page.get_by_test_id("proceed")).to_be_visible()
    await expect(page.get_by_test_id("delete")).to_be_visible()
    await expect(page.get_by_test_id("block-message")).to_have_text(
        "Generation failed. Proceed to resume it, or delete the run, before generating again."
    )
    await shot(page, "generating-failed")

    gen.fail_after = None
    gen.hold()
    await page.get_by_test_id("proceed").click()
    resumed = page.get_by_test_id("notice")
    await expect(resumed).to_contain_text("Resuming generation from chunk ", timeout=TIMEOUT)
    gen.release()
    await expect(page.get_by_test_id("run-status")).to_have_text("Generated", timeout=TIMEOUT)
    await expect(page.get_by_test_id("run-error")).to_be_hidden()
    await expect(page.get_by_test_id("progress")).to_have_attribute("aria-valuenow", "100")
    # the notice was about that job: it goes when the job ends
    await expect(resumed).to_have_text("")
    await expect(resumed).to_be_hidden()


async def test_delete_asks_to_confirm(browser: Any, api_factory: Any) -> None:
    api: Api = await api_factory(generator=ControlledGenerator(fail_after=3))
    user = uuid.uuid4()
    await api.ingest(user, 10)
    page = await open_page(browser, api, user)
    await page.get_by_test_id("generate").click()
    await expect(page.get_by_test_id("delete")).to_be_visible(timeout=TIMEOUT)

    await page.get_by_test_id("delete").click()
    dialog = page.get_by_test_id("confirm-delete")
    await expect(dialog).to_be_visible()
    await shot(page, "confirm-delete")
    await page.get_by_test_id("confirm-cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_test_id("run")).to_be_visible()

    await page.get_by_test_id("delete").click()
    await page.get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("notice")).to_have_text(
        "Training run and 9 associated pairs deleted", timeout=TIMEOUT
    )
    await expect(page.get_by_test_id("run")).to_be_hidden()
    await expect(page.get_by_test_id("generate")).to_be_enabled()


WARNING = (
    "Deep Memory requires a DeepLake Cloud vector store (hub://). Your vector store is local, "
    "so Deep Memory is unavailable."
)

MESSAGES = {
    "generating": "Training data is being generated. Wait for it to finish before generating "
    "again.",
    "generated": "Training data is ready. Train it before generating again.",
    "training": "A Deep Memory model is training. Wait for it to finish before generating again.",
    "generating_failed": "Generation failed. Proceed to resume it, or delete the run, before "
    "generating again.",
    "training_failed": "Training failed. Proceed to retry it, or delete the run, before "
    "generating again.",
}


# what the page calls each status ("Generation failed", not "Generating Failed")
LABELS = {
    "generating": "Generating",
    "generated": "Generated",
    "training": "Training",
    "generating_failed": "Generation failed",
    "training_failed": "Training failed",
}

ERRORS = {
    "generating_failed": "Question generation failed at chunk 3: upstream HTTP 500 "
    "(2/4 chunks done)",
    "training_failed": "Training failed: injected trainer fault: job failed upstream",
}


async def test_the_button_is_disabled_with_a_message_for_each_blocking_status(
    browser: Any, api_factory: Any
) -> None:
    api: Api = await api_factory(generator=ControlledGenerator())
    user = uuid.uuid4()
    await api.ingest(user, 4)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user)})
    await api.wait_status(user, body["training_run_id"], "generated")
    await api.idle(user)
    page = await open_page(browser, api, user)
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/events/stream/" in r.url else None)
    for status, message in MESSAGES.items():
        await force_status(api, body["training_run_id"], status, error=ERRORS.get(status))
        streams.clear()
        await page.reload()
        await expect(page.get_by_test_id("block-message")).to_have_text(message, timeout=TIMEOUT)
        await expect(page.get_by_test_id("generate")).to_be_disabled()
        await expect(page.get_by_test_id("run-status")).to_have_text(LABELS[status])
        failed = status.endswith("_failed")
        for button in ("proceed", "delete"):
            await expect(page.get_by_test_id(button)).to_be_visible(visible=failed)
        await expect(page.get_by_test_id("train")).to_be_visible(visible=status == "generated")
        if failed:
            await expect(page.get_by_test_id("run-error")).to_have_text(ERRORS[status])
        if status in ("generating", "training"):
            # the run says running but its job is over (as after a crash, until the sweeper
            # marks it failed): the page reads the ended job once, then rechecks the run
            # now and then instead of replaying that job in a loop
            await expect(page.get_by_test_id("progress")).to_be_visible()
            await page.wait_for_function(
                "() => document.getElementById('run-status').textContent !== ''"
            )
        await shot(page, f"blocked-{status}")
        assert len(streams) <= 2, streams


async def test_a_local_store_without_the_local_trainer_shows_the_warning(
    browser: Any, api_factory: Any, settings: Any
) -> None:
    cloud_only = attrs.evolve(settings, trainer="activeloop")
    api: Api = await api_factory(cloud_only, trainer=ScriptedTrainer())
    user = uuid.uuid4()
    page = browser.pages[0] if browser.pages else await browser.new_page()
    token = mint_token(api.services.settings, user, 600)
    await follow_login_link(page, api, token, user)
    warning = page.get_by_test_id("cloud-warning")
    await expect(warning).to_be_visible(timeout=TIMEOUT)
    await expect(warning).to_have_text(WARNING)
    await expect(page.get_by_test_id("settings-card")).to_be_hidden()
    await expect(page.get_by_test_id("generate")).to_be_hidden()
    await shot(page, "non-cloud-warning")


async def test_the_page_reads_on_a_phone(browser: Any, api_factory: Any) -> None:
    api: Api = await api_factory(generator=ControlledGenerator(fail_after=2))
    user = uuid.uuid4()
    await api.ingest(user, 6)
    page = await open_page(browser, api, user)
    await page.set_viewport_size({"width": 375, "height": 740})
    await page.get_by_test_id("generate").click()
    await expect(page.get_by_test_id("proceed")).to_be_visible(timeout=TIMEOUT)
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, "the page scrolls sideways on a phone"
    await shot(page, "phone-failed-run")


async def test_the_login_page_refuses_a_bad_token(browser: Any, api: Api) -> None:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    await page.goto(str(api.client.make_url("/deep-memory")))
    await expect(page).to_have_url(str(api.client.make_url("/login")))
    await page.fill("#token", "not-a-token")
    await page.click("button[type=submit]")
    await expect(page.get_by_role("alert")).to_have_text("Token is malformed")
    await shot(page, "login-refused")


async def test_a_page_opened_during_a_run_follows_its_job_to_the_end(
    browser: Any, api_factory: Any
) -> None:
    gen = ControlledGenerator()
    api: Api = await api_factory(generator=gen)
    user = uuid.uuid4()
    await api.ingest(user, 12)
    gen.hold()
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user)})
    await asyncio.wait_for(gen.started.wait(), 10)
    # the page learns the job from the run's latest_job_id, not from a click
    page = await open_page(browser, api, user)
    await expect(page.get_by_test_id("run-status")).to_have_text("Generating", timeout=TIMEOUT)
    await expect(page.get_by_test_id("block-message")).to_have_text(MESSAGES["generating"])
    await expect(page.get_by_test_id("progress")).to_be_visible()
    gen.release()
    await expect(page.get_by_test_id("progress")).to_have_attribute(
        "aria-valuenow", "100", timeout=TIMEOUT
    )
    await expect(page.get_by_test_id("run-status")).to_have_text("Generated", timeout=TIMEOUT)
    await expect(page.get_by_test_id("train")).to_be_visible()
    assert (await api.run(user, body["training_run_id"]))["status"] == "generated"


async def test_a_failed_training_proceeds_to_completion_and_can_be_enabled(
    browser: Any, api_factory: Any
) -> None:
    trainer = ScriptedTrainer(failures=1)
    api: Api = await api_factory(generator=ControlledGenerator(), trainer=trainer)
    user = uuid.uuid4()
    await api.ingest(user, 12)
    page = await open_page(browser, api, user)
    await page.get_by_test_id("generate").click()
    await page.get_by_test_id("train").click(timeout=TIMEOUT)
    await expect(page.get_by_test_id("run-error")).to_have_text(
        "Training failed: injected trainer fault: job failed upstream", timeout=TIMEOUT
    )
    await expect(page.get_by_test_id("block-message")).to_have_text(MESSAGES["training_failed"])
    await shot(page, "training-failed")

    # held until the notice is seen: it is about the job, and goes when the job ends
    trainer.gate = asyncio.Event()
    await page.get_by_test_id("proceed").click()
    await expect(page.get_by_test_id("notice")).to_contain_text(
        "Resuming training with ", timeout=TIMEOUT
    )
    trainer.gate.set()
    toggle = page.get_by_test_id("enable-toggle")
    await expect(toggle).to_be_enabled(timeout=TIMEOUT)
    await expect(page.get_by_test_id("run")).to_be_hidden()
    await expect(page.get_by_test_id("trained-chunks")).to_have_text("12")
    await expect(page.get_by_test_id("last-metrics")).to_have_text(
        "Testing the new model, Deep Memory found the right passage in the top 10 90% of the "
        "time, against 50% without it. It can be used for search."
    )
    await expect(page.get_by_test_id("verdict-figures")).to_have_text(
        "recall@10 0.50 → 0.90 (without → with Deep Memory)"
    )

    await toggle.check()
    await expect(page.get_by_test_id("enabled")).to_have_text("on", timeout=TIMEOUT)
    await expect(page.get_by_test_id("notice")).to_have_text(
        "Deep Memory is on: searches use the trained model."
    )
    await shot(page, "training-proceeded")


async def test_search_compares_results_with_and_without_deep_memory(
    browser: Any, api_factory: Any
) -> None:
    # questions full of noise words that a model learns to ignore (the backend's own
    # training test): without the model the noise chunk wins, with it the right chunk does
    api: Api = await api_factory(generator=NoisyGenerator())
    user = uuid.uuid4()
    words = [f"{kind}{i}" for i in range(30) for kind in ("amber", "cobalt", "jade", "ochre")]
    chunks = [" ".join(words[i * 4 : i * 4 + 4]) + "." for i in range(30)]
    docs = [{"text": NOISE + "."}] + [{"text": c} for c in chunks]
    code, _ = await api.call("POST", "/documents", json={"user_id": str(user), "documents": docs})
    assert code == 201
    _, body = await api.call(
        "POST",
        "/deep-memory/generate",
        json={"user_id": str(user), "questions_per_chunk": 4, "auto_train": True},
    )
    await api.wait_status(user, body["training_run_id"], "completed", timeout=120)
    page = await open_page(browser, api, user)
    await expect(page.get_by_test_id("search-card")).to_be_visible()
    # enabled or not, the verdict is one sentence in a user's words, with its figures
    await expect(page.get_by_test_id("last-metrics")).to_have_text(
        re.compile(
            r"^Testing the new model on \d+ (searches it had not seen|generated questions it was "
            r"not trained on)(, Deep Memory put the right passage first (\d+% of the time, "
            r"against \d+% without it|as often as without it \(\d+%\)), and in the top \d+ \d+% "
            r"of the time, against \d+%\. It can be used for search\.|: .+, so it was not "
            r"enabled\.)$"
        )
    )
    # each column shows exactly what the backend answers; whether the model beats no model
    # is the trainer's business (the backend's training tests)
    query = f"{NOISE} {chunks[7].split()[2]}"
    await page.get_by_label("Query").fill(query)
    await page.get_by_test_id("search-submit").click()
    for column, deep_memory in (("results-plain", "false"), ("results-dm", "true")):
        code, found = await api.call(
            "GET",
            "/search",
            params={"user_id": str(user), "q": query, "k": "5", "deep_memory": deep_memory},
        )
        items = page.get_by_test_id(column).locator("li")
        if code == 200:
            # hits that share nothing with the query (score 0) are left out
            texts = [hit["text"] for hit in found["results"] if hit["score"] > 0]
            assert texts
            await expect(items).to_have_text(
                [re.compile(re.escape(t)) for t in texts], timeout=TIMEOUT
            )
        else:
            # no model was kept (it scored no better than none): the column says why
            assert deep_memory == "true", found
            await expect(items).to_have_text([found["detail"]], timeout=TIMEOUT)
    await shot(page, "search-compared")
    await phone_shot(page, "phone-search", "the search comparison")


async def trained(
    browser: Any, api_factory: Any, trainer: ScriptedTrainer
) -> tuple[Api, uuid.UUID, Any]:
    """A user with six chunks, trained by `trainer`, and the page open on them."""
    api: Api = await api_factory(generator=ControlledGenerator(), trainer=trainer)
    user = uuid.uuid4()
    await api.ingest(user, 6)
    _, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "auto_train": True}
    )
    await api.wait_status(user, body["training_run_id"], "completed")
    return api, user, await open_page(browser, api, user)


async def test_a_search_without_a_model_says_why_in_its_column(
    browser: Any, api_factory: Any
) -> None:
    api, user, page = await trained(browser, api_factory, ScriptedTrainer())
    await page.get_by_label("Query").fill("advisory locks")
    await page.get_by_test_id("search-submit").click()
    _, found = await api.call(
        "GET", "/search", params={"user_id": str(user), "q": "advisory locks", "k": "5"}
    )
    scored = [hit for hit in found["results"] if hit["score"] > 0]
    await expect(page.get_by_test_id("results-plain").locator("li")).to_have_count(len(scored))
    # the stand-in trainer keeps no model: the backend's 409 detail stands in the column
    missing = page.get_by_test_id("results-dm").locator("li")
    await expect(missing).to_have_count(1, timeout=TIMEOUT)
    await expect(missing).to_contain_text("No trained Deep Memory model")


async def test_a_model_kept_out_is_explained_by_the_toggle_and_in_the_search_column(
    browser: Any, api_factory: Any
) -> None:
    _, _, page = await trained(browser, api_factory, ScriptedTrainer(can_enable=False))
    # the toggle cannot be switched on, and the trainer's verdict stands beside it
    await expect(page.get_by_test_id("enable-toggle")).to_be_disabled(timeout=TIMEOUT)
    await expect(page.get_by_test_id("enable-reason")).to_have_text(
        "The trainer's verdict: It scored worse than no model."
    )
    await page.get_by_label("Query").fill("advisory locks")
    await page.get_by_test_id("search-submit").click()
    kept_out = page.get_by_test_id("results-dm").locator("li")
    await expect(kept_out).to_have_text(
        ["The last trained Deep Memory model was not enabled. It scored worse than no model."],
        timeout=TIMEOUT,
    )
    await shot(page, "model-kept-out")
