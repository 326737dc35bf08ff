"""`scripts/bench_retrieval --human DIR --llm-url URL`: the collections' chunks asked of an
OpenAI-compatible server as a run asks them (the checks, asking again with what was
wrong, the round trip), at most the server's slots at once, each chunk's questions kept in
the record file as they come; a second run asks only for the chunks the file lacks. The
server is the LLM stand-in with llama-server's slots."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from deepmemory_service.platform.config import load_settings
from deepmemory_service.storage.embedders import HashingEmbedder
from deepmemory_service.testing.standin_llm import (
    CONFIG,
    STATS,
    StandinConfig,
    chunk_key,
    create_standin_app,
)
from tests.conftest import paragraph

# the benchmarks are scripts, not a package: bench_retrieval imports bench_human beside it
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_human  # after the path it is found on (ruff allows imports after sys.path)

SLOTS = 2


@pytest.fixture
async def standin(aiohttp_server: Any) -> Any:
    return await aiohttp_server(create_standin_app(StandinConfig(slots=SLOTS, latency_ms=20)))


def corpus_of(answers: list[str]) -> bench_human.Corpus:
    collection = bench_human.Collection(
        "faq", [f"question {i}" for i in range(len(answers))], answers
    )
    return bench_human.chunk_corpus("faq", [collection], load_settings({}))


async def record(standin: Any, corpus: bench_human.Corpus, path: Path) -> bench_human.RecordTally:
    generator = bench_human.live_llm(str(standin.make_url("/v1")), "standin")
    try:
        return await bench_human.record_llm_questions(
            [corpus], generator, load_settings({}).questions, HashingEmbedder(), 3, path
        )
    finally:
        await generator.aclose()


async def test_every_chunk_is_asked_once_within_the_slots_and_a_rerun_asks_what_is_missing(
    standin: Any, tmp_path: Path
) -> None:
    corpus = corpus_of([paragraph(i) for i in range(14)])
    path = tmp_path / "questions.json"
    stats = standin.app[STATS]

    tally = await record(standin, corpus, path)

    recorded = json.loads(path.read_text())
    assert set(recorded) == set(corpus.chunks)
    assert all(len(questions) == 3 for questions in recorded.values())
    assert (tally.chunks, tally.failed, tally.checks.short_chunks) == (14, 0, 0)
    # one call a chunk and one for each time a chunk was asked again, never past the slots
    assert stats.successes == 14 + tally.checks.reasks
    assert stats.most_working == SLOTS

    # a run stopped before two chunks were kept: only those are asked
    missing = corpus.chunks[3], corpus.chunks[9]
    for text in missing:
        del recorded[text]
    path.write_text(json.dumps(recorded))
    stats.clear()

    tally = await record(standin, corpus, path)

    assert tally.chunks == 2
    assert set(stats.per_chunk) == {chunk_key(text) for text in missing}
    assert set(json.loads(path.read_text())) == set(corpus.chunks)


async def test_a_chunk_whose_questions_are_turned_down_is_asked_again_and_counted(
    standin: Any, tmp_path: Path
) -> None:
    corpus = corpus_of([paragraph(0)])
    # what a small model writes: one about the passage itself, and a statement
    standin.app[CONFIG].replies = [
        ["What is the passage about?", "Component0 is a component.", "How does component0 work?"]
    ]
    path = tmp_path / "questions.json"

    tally = await record(standin, corpus, path)

    assert tally.checks.rejections["about_text"] == 1
    assert tally.checks.reasks == 1
    assert standin.app[STATS].reasks == 1
    [questions] = json.loads(path.read_text()).values()
    assert len(questions) == 3
    assert "How does component0 work?" in questions
    assert "What is the passage about?" not in questions
