"""`scripts/bench_retrieval --human DIR --results-json PATH`: every trained model's verdict,
the trainer's own figures and each human question's hits without and with it, as JSON that
a judge can be scored against without training again. A real training (the local trainer,
the offline generator, a deeplake store on disk) on a small corpus."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
