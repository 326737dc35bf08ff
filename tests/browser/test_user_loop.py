"""A user's whole loop on the page, in a real browser: add documents (picker, drop, large files
in parts, a limit that says when to come back), see them listed, search before any training,
and read the history of their runs."""

from __future__ import annotations

import json
import re
import uuid
from importlib import resources
from typing import Any

import attrs
from playwright.async_api import expect

from deepmemory_service.testing.fakes import ControlledGenerator, ScriptedTrainer
from tests.browser.conftest import phone_shot, shot
from tests.browser.test_deep_memory_page import TIMEOUT, open_page
from tests.conftest import Api

DEMO = resources.files("deepmemory_service").joinpath("data/us-founding-documents.md").read_text()


def text_file(name: str, text: str) -> dict[str, Any]:
    return {"name": name, "mimeType": "text/plain", "buffer": text.encode()}


# the start of a PDF as it is on disk: a marker line of high bytes, then compressed streams
PDF = (
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Length 20 >>\nstream\nx\x9c\x00\x01\xff\n"
    b"endstream\n"
)


async def upload_results(page: Any) -> list[tuple[str, str]]:
    """What the page says of each file it was given: (its class, its line)."""
    items: list[tuple[str, str]] = await page.get_by_test_id("upload-results").evaluate(
        "u => [...u.children].map(li => [li.className, li.textContent])"
    )
    return [(kind, text) for kind, text in items]


async def listed(api: Api, user: uuid.UUID) -> list[tuple[str, str]]:
    """The user's documents as the backend lists them: (title, chunk count)."""
    code, body = await api.call("GET", "/documents", params={"user_id": str(user)})
    assert code == 200, body
    return [(d["title"], str(d["chunk_count"])) for d in body["documents"]]


async def rows(page: Any, testid: str) -> list[list[str]]:
    cells: list[list[str]] = await page.get_by_test_id(testid).evaluate(
        "t => [...t.tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent))"
    )
    return cells


async def drop(page: Any, name: str, text: str) -> None:
    """Drops a file on the drop zone as a browser does: a drop event carrying a DataTransfer."""
    await page.get_by_test_id("dropzone").evaluate(
        """(zone, [name, text]) => {
            const data = new DataTransfer();
            data.items.add(new File([text], name, { type: "text/markdown" }));
            zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: data, bubbles: true }));
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true }));
        }""",
        [name, text],
    )


async def test_documents_are_added_by_picker_and_by_drop_and_listed(
    browser: Any, api_factory: Any
) -> None:
    api: Api = await api_factory(generator=ControlledGenerator())
    user = uuid.uuid4()
    page = await open_page(browser, api, user)
    await expect(page.get_by_test_id("documents-summary")).to_have_text(
        "No documents yet: add some to search them and train Deep Memory."
    )
    await expect(page.get_by_test_id("generate")).to_be_disabled()

    await page.get_by_test_id("file-input").set_input_files(
        [
            text_file("constitution.md", DEMO),
            text_file("notes.txt", "Leases are renewed by heartbeat every ten seconds."),
            {"name": "scan.pdf", "mimeType": "application/pdf", "buffer": PDF},
            text_file("blank.md", "  \n"),
        ]
    )
    status = page.get_by_test_id("upload-status")
    await expect(status).to_have_text(
        "Added 2 files (22 chunks). 2 files were not added: see why below.", timeout=TIMEOUT
    )
    # some went in: the summary is not an error; each refused file is, on its own line
    await expect(status).not_to_have_class(re.compile("error"))
    # each file once, in the order chosen; a refused one is an error, saying why
    assert await upload_results(page) == [
        ("added", "constitution.md: added, 21 chunks"),
        ("added", "notes.txt: added, 1 chunk"),
        (
            "error",
            "scan.pdf: not text: it holds NUL bytes: a binary file, or UTF-16 "
            "without a byte-order mark",
        ),
        ("error", "blank.md: not added: the file holds only white space"),
    ]
    color = (
        await page.get_by_test_id("upload-results")
        .locator("li.error")
        .first.evaluate("li => getComputedStyle(li).color")
    )
    assert color == "rgb(198, 40, 40)", color  # the page's red
    want = await listed(api, user)
    assert sorted(want) == [("constitution.md", "21"), ("notes.txt", "1")]
    table = page.get_by_test_id("documents")
    await expect(table.locator("tbody tr")).to_have_count(2)
    assert [r[:2] for r in await rows(page, "documents")] == [list(w) for w in want]
    await expect(page.get_by_test_id("documents-summary")).to_have_text("2 documents, 22 chunks.")
    # the page learned of the new chunks: generation may start
    await expect(page.get_by_test_id("total-chunks")).to_have_text("22")
    await expect(page.get_by_test_id("generate")).to_be_enabled()
    await shot(page, "documents-added")

    await drop(page, "dropped.md", "# Dropped\n\nA file dropped on the page.")
    await expect(status).to_have_text("Added 1 file (1 chunk).")
    await expect(table.locator("tbody tr").first).to_contain_text("dropped.md")
    await drop(page, "dropped.md", "# Dropped\n\nA file dropped on the page.")
    await expect(status).to_have_text("1 file was already there, unchanged.")
    assert await upload_results(page) == [("unchanged", "dropped.md: already there, unchanged")]
    assert len(await listed(api, user)) == 3
    await shot(page, "documents-unchanged")
    await phone_shot(page, "phone-documents", "the documents card")


async def test_a_file_over_the_body_limit_is_one_document_with_progress(
    browser: Any, api_factory: Any, settings: Any
) -> None:
    # a JSON body may not pass 16 kB here; a file has its own limit, and is one document
    small = attrs.evolve(settings, http=attrs.evolve(settings.http, max_body_bytes=16_384))
    api: Api = await api_factory(small, generator=ControlledGenerator())
    user = uuid.uuid4()
    page = await open_page(browser, api, user)
    paragraph = "Ünïcödé pässägé 🙂 about leases, heartbeats and sweepers. " * 12
    big = "\n\n".join(f"## Part {i}\n\n{paragraph}" for i in range(120))
    assert len(big.encode()) > 4 * 16_384
    await page.evaluate(
        """() => {
            window.progressSeen = [];
            const bar = document.getElementById("upload-progress");
            const seen = () => window.progressSeen.push(Number(bar.getAttribute("aria-valuenow")));
            new MutationObserver(seen)
                .observe(bar, { attributes: true, attributeFilter: ["aria-valuenow"] });
        }"""
    )
    await page.get_by_test_id("file-input").set_input_files([text_file("big.md", big)])
    status = page.get_by_test_id("upload-status")
    await expect(status).to_contain_text("Added 1 file (", timeout=TIMEOUT)
    ((title, chunks),) = await listed(api, user)
    assert title == "big.md"
    assert int(chunks) > 20
    assert await upload_results(page) == [("added", f"big.md: added, {chunks} chunks")]
    await expect(page.get_by_test_id("documents").locator("tbody tr")).to_have_count(1)
    seen = await page.evaluate("window.progressSeen")
    assert seen[-1] == 100
    await expect(page.get_by_test_id("upload-progress")).to_be_hidden()
    # the whole file is there, as written
    code, body = await api.call(
        "GET", "/search", params={"user_id": str(user), "q": "Part 119", "k": "3"}
    )
    assert code == 200, body
    assert any("Part 119" in hit["text"] and "Ünïcödé" in hit["text"] for hit in body["results"])


async def test_an_upload_limit_is_waited_out_as_retry_after_says(
    browser: Any, api_factory: Any
) -> None:
    api: Api = await api_factory(generator=ControlledGenerator())
    user = uuid.uuid4()
    page = await open_page(browser, api, user)
    answered: list[int] = []

    # the service's per-user upload limit answers 429 with Retry-After; the first try here
    # meets it (the limit's own tests are the backend's), the second goes through
    async def limit_once(route: Any) -> None:
        if route.request.method != "POST":
            await route.continue_()  # the listing
            return
        if not answered:
            answered.append(429)
            await route.fulfill(
                status=429,
                headers={"Retry-After": "1", "Content-Type": "application/json"},
                body=json.dumps({"detail": "Too many uploads for this user; retry shortly"}),
            )
            return
        answered.append(200)
        await route.continue_()

    await page.route(re.compile(r".*/api/documents/file\?.*"), limit_once)
    await page.get_by_test_id("file-input").set_input_files([text_file("a.md", "Some text.")])
    status = page.get_by_test_id("upload-status")
    await expect(status).to_have_text(
        "Too many uploads for this user; retry shortly. Trying again in 1 s…"
    )
    await shot(page, "upload-waiting")
    await expect(status).to_have_text("Added 1 file (1 chunk).", timeout=TIMEOUT)
    assert answered == [429, 200]
    assert await listed(api, user) == [("a.md", "1")]


async def test_search_works_before_any_training_and_reads_as_text(
    browser: Any, api_factory: Any
) -> None:
    api: Api = await api_factory(generator=ControlledGenerator())
    user = uuid.uuid4()
    code, _ = await api.call(
        "POST",
        "/documents",
        json={"user_id": str(user), "documents": [{"title": "constitution.md", "text": DEMO}]},
    )
    assert code == 201
    page = await open_page(browser, api, user)
    card = page.get_by_test_id("search-card")
    await expect(card).to_be_visible()
    await expect(page.get_by_test_id("search-help")).to_contain_text(
        "the cosine similarity of their embeddings"
    )
    query = "freedom of speech and of the press"
    await page.get_by_label("Query").fill(query)
    await page.get_by_test_id("search-submit").click()
    items = page.get_by_test_id("results-plain").locator("li")
    await expect(items.first).to_contain_text("Amendment I: Freedom of religion, speech, press")
    await expect(items.first.locator("strong")).to_have_text(
        "Amendment I: Freedom of religion, speech, press, assembly and petition"
    )
    code, found = await api.call(
        "GET", "/search", params={"user_id": str(user), "q": query, "k": "5"}
    )
    scored = [hit for hit in found["results"] if hit["score"] > 0]
    assert len(scored) < len(found["results"]), "the query should also meet chunks it misses"
    await expect(items).to_have_count(len(scored))
    texts = await items.all_text_contents()
    assert not any("##" in t or "**" in t for t in texts), texts
    for text, hit in zip(texts, scored, strict=True):
        assert text.endswith(f"score {hit['score']:.2f}"), (text, hit)
    # no model yet: the column says what to do, and is not an error
    untrained = page.get_by_test_id("results-dm").locator("li")
    await expect(untrained).to_have_text(
        ["No Deep Memory model yet: generate training data and train it, then compare here."]
    )
    await expect(untrained).not_to_have_class(re.compile("error"))
    await shot(page, "search-before-training")


async def test_the_run_history_lists_runs_newest_first_with_their_errors(
    browser: Any, api_factory: Any
) -> None:
    gen = ControlledGenerator()
    api: Api = await api_factory(generator=gen, trainer=ScriptedTrainer())
    user = uuid.uuid4()
    await api.ingest(user, 6)
    page = await open_page(browser, api, user)
    await expect(page.get_by_test_id("runs-empty")).to_have_text(
        "No runs yet: generate training data to start one."
    )
    _, first = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "auto_train": True}
    )
    await api.wait_status(user, first["training_run_id"], "completed")
    await api.idle(user)
    # new documents: the first run's chunks are reused, the new ones go to the generator,
    # which fails after two of them
    fresh = [{"text": f"Fresh note {i}: sweeper{i} fails lease{i} runs."} for i in range(6)]
    code, _ = await api.call("POST", "/documents", json={"user_id": str(user), "documents": fresh})
    assert code == 201
    gen.fail_after = gen.total_calls + 2
    _, second = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user)})
    failed = await api.wait_status(user, second["training_run_id"], "generating_failed")
    await api.idle(user)

    await page.reload()
    table = page.get_by_test_id("runs")
    await expect(table.locator("tbody tr")).to_have_count(3)
    got = await rows(page, "runs")
    assert [r[1:4] for r in (got[0], got[2])] == [
        ["Generation failed", f"{failed['generated_chunks']}/12", str(failed["pair_count"])],
        ["Completed", "6/6", "18"],
    ]
    assert got[1] == [failed["error_message"]]
    assert got[0][4] != "—"  # a failed run has ended
    await expect(table.locator("th.usage")).to_be_hidden()
    await shot(page, "run-history")
    await phone_shot(page, "phone-run-history", "the run history")


async def test_the_page_loads_without_a_failed_request_and_has_an_icon(
    browser: Any, api_factory: Any
) -> None:
    api: Api = await api_factory(generator=ControlledGenerator())
    user = uuid.uuid4()
    await api.ingest(user, 3)
    page = browser.pages[0] if browser.pages else await browser.new_page()
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page = await open_page(browser, api, user)
    await expect(page.get_by_test_id("runs-empty")).to_be_visible()
    icon = await page.request.get(str(api.client.make_url("/favicon.ico")))
    assert icon.status == 200
    assert icon.headers["content-type"] == "image/vnd.microsoft.icon"
    assert (await icon.body())[:4] == b"\x00\x00\x01\x00"  # an ICO file
    await page.reload()
    await expect(page.get_by_test_id("documents")).to_be_visible()
    assert failed == []


async def test_the_run_history_shows_what_a_run_spent_at_the_llm(
    browser: Any, api_factory: Any, aiohttp_server: Any, settings: Any
) -> None:
    from deepmemory_service.testing.standin_llm import StandinConfig, create_standin_app

    standin = await aiohttp_server(create_standin_app(StandinConfig()))
    llm = attrs.evolve(
        settings.llm,
        base_url=str(standin.make_url("/v1")),
        price_input_per_mtok=0.15,
        price_output_per_mtok=0.60,
    )
    api: Api = await api_factory(attrs.evolve(settings, generator="llm", llm=llm))
    user = uuid.uuid4()
    await api.ingest(user, 4)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user)})
    run = await api.wait_status(user, body["training_run_id"], "generated")
    tokens = run["prompt_tokens"] + run["completion_tokens"]
    assert tokens > 0
    assert 0 < run["cost_usd"] < 1
    page = await open_page(browser, api, user)
    table = page.get_by_test_id("runs")
    await expect(table.locator("th.usage")).to_be_visible()
    await expect(table.locator("tbody tr")).to_have_count(1)
    (row,) = await rows(page, "runs")
    assert row[1:4] == ["Generated", "4/4", str(run["pair_count"])]
    assert row[4] != "—"  # generation has ended
    cost = run["cost_usd"]
    assert row[5] == f"{tokens:,} tokens · ${cost:.{4 if cost < 0.01 else 2}f}"
    await shot(page, "run-history-usage")
