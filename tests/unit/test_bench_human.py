"""`scripts/bench_retrieval --human DIR --results-json PATH`: every trained model's verdict,
the trainer's own figures and each human question's hits without and with it, as JSON that
a judge can be scored against without training again. A real training (the local trainer,
the offline generator, a deeplake store on disk) on a small corpus. And the `llm-filtered`
generator's checks, which must be the ones a run applies to an answer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from deepmemory_service.llm.client import PROMPT_EXAMPLE
from deepmemory_service.llm.generators import OfflineQuestionGenerator
from deepmemory_service.platform.config import load_settings
from deepmemory_service.storage.embedders import HashingEmbedder
from tests.conftest import paragraph

# the benchmarks are scripts, not a package: bench_retrieval imports bench_human beside it
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_human  # after the path it is found on (ruff allows imports after sys.path)


async def test_every_models_verdict_figures_and_human_hits_are_written(tmp_path: Path) -> None:
    settings = load_settings({})
    answers = [paragraph(i) for i in range(40)]
    questions = [f"How does component{i} talk to module{i % 5}?" for i in range(40)]
    corpus = bench_human.chunk_corpus(
        "faq", [bench_human.Collection("faq", questions, answers)], settings
    )
    embedder = bench_human.CachedEmbedder(HashingEmbedder())
    results = await bench_human.bench_corpus(
        corpus, embedder, OfflineQuestionGenerator(), 3, [0, 1], settings, tmp_path
    )

    written = json.loads(json.dumps(bench_human.results_json(results)))

    assert [(m["corpus"], m["seed"]) for m in written] == [("faq", 0), ("faq", 1)]
    for model, result in zip(written, results, strict=True):
        assert model["enabled"] == result.enabled
        assert (model["reason"] is None) == result.enabled
        # the trainer's figures on the queries that chose nothing: won and lost at 1 and 10
        assert set(model["trainer"]["changes"]) == {"recall@1", "recall@10"}
        human = model["human"]
        assert all(len(hits) == len(questions) for hits in human.values())
        for k in (1, 10):
            assert sum(human[f"with@{k}"]) / len(questions) == result.paired.recall(k, True)
            assert sum(human[f"without@{k}"]) / len(questions) == result.paired.recall(k, False)


async def test_filtered_questions_are_checked_as_a_run_checks_an_answer() -> None:
    texts = [paragraph(i) for i in range(40)]
    embedder = bench_human.CachedEmbedder(HashingEmbedder())
    corpus = await embedder.embed(texts)
    asked = [
        # chunk 0: the prompt's own example, pasted in (held as asked already), and a good one
        (0, PROMPT_EXAMPLE),
        (0, "How does component0 talk to module0?"),
        # chunk 1: a real question, but about another chunk: the round trip turns it down
        # and gives its key back, so chunk 7, asked the same, keeps it
        (1, "Which module2 or module3 detail matters?"),
        (1, "Item 1 explains detail number 7 about component1 and its interaction?"),
        (7, "Which module2 or module3 detail matters?"),
        (7, "What does the passage say about component7?"),
    ]
    filtered = bench_human.FilteredGenerator(OfflineQuestionGenerator())

    kept, rows = await filtered.keep(
        [q for _, q in asked], [r for r, _ in asked], texts, embedder, corpus
    )

    assert list(zip(rows, kept, strict=True)) == [
        (0, "How does component0 talk to module0?"),
        (7, "Which module2 or module3 detail matters?"),
    ]
    assert filtered.rejected == {"duplicate": 1, "round_trip": 1, "copied": 1, "about_text": 1}
