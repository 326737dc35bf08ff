"""Retrieval on questions people wrote: `scripts/bench_retrieval --human DIR`.

DIR holds `*.json` files, each a list of `{"question", "answer"}` records (a FAQ, say):
one collection per file. For each collection, and for all of them pooled into one corpus,
the answers are ingested as one user's documents (chunked as the service chunks), the
offline generator writes training questions about every chunk, and the service's local
trainer trains and judges a model on them, exactly as a run would. The trainer never sees
the human questions: they only measure the model afterwards. A question is found at k
when any chunk of its answer ranks in the top k.

Per model (each embedder, generator, corpus and seed) it prints recall@1 and @10 without → with
the model on every human question, the questions won and lost (paired), a paired
bootstrap 95% interval of the recall@1 change, whether the trainer enabled the model and
why not, and the training time; then the goals' figures over all models.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import numpy.typing as npt

from deepmemory_service.llm.client import LLMQuestionGenerator
from deepmemory_service.llm.generators import (
    CheckedGenerator,
    GenerationError,
    OfflineQuestionGenerator,
    QuestionGenerator,
)
from deepmemory_service.llm.question_checks import (
    after_round_trip,
    check_answer,
    duplicate_key,
)
from deepmemory_service.models import Chunk
from deepmemory_service.platform.config import QuestionSettings, Settings, load_settings
from deepmemory_service.runs.questioning import Asker, RoundTrip, Tally
from deepmemory_service.storage.dataset import Rows
from deepmemory_service.storage.embedders import Embedder
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.text import chunking
from deepmemory_service.text.queries import STOPWORDS
from deepmemory_service.training.local import LocalTrainer, Trained
from deepmemory_service.training.trainer import (
    TrainingError,
    TrainingOutcome,
    TrainingProgress,
    TrainingRequest,
)
from deepmemory_service.vectors import Matrix

BOOTSTRAP = 2000
# the round trip keeps a question when the base embedder ranks its chunk in this top k
ROUND_TRIP_K = 10


@attrs.frozen
class Collection:
    name: str
    questions: list[str]
    answers: list[str]


def read_collections(folder: Path, only: Sequence[str] = ()) -> list[Collection]:
    """Every `*.json` file of `{question, answer}` records, by file name."""
    found = []
    for path in sorted(folder.glob("*.json")):
        if only and path.stem not in only:
            continue
        records = json.loads(path.read_text())
        if not isinstance(records, list) or not all(
            isinstance(r, dict)
            and isinstance(r.get("question"), str)
            and isinstance(r.get("answer"), str)
            for r in records
        ):
            raise SystemExit(f"{path}: expected a list of {{question, answer}} records")
        found.append(
            Collection(path.stem, [r["question"] for r in records], [r["answer"] for r in records])
        )
    if not found:
        raise SystemExit(
            f"{folder}: no *.json collections" + (f" named {', '.join(only)}" if only else "")
        )
    return found


@attrs.frozen
class Corpus:
    """A user's documents as chunks, and each human question's relevant chunk rows."""

    name: str
    chunks: list[str]
    questions: list[str]
    relevant: list[npt.NDArray[np.int64]]


def chunk_corpus(name: str, collections: Sequence[Collection], settings: Settings) -> Corpus:
    chunks: list[str] = []
    questions: list[str] = []
    relevant: list[npt.NDArray[np.int64]] = []
    for collection in collections:
        for question, answer in zip(collection.questions, collection.answers, strict=True):
            pieces = chunking.split(
                answer, settings.store.chunk_chars, settings.store.chunk_overlap
            )
            relevant.append(np.arange(len(chunks), len(chunks) + len(pieces), dtype=np.int64))
            chunks += pieces
            questions.append(question)
    return Corpus(name, chunks, questions, relevant)


def any_hit_ranks(
    queries: Matrix, relevant: Sequence[npt.NDArray[np.int64]], corpus: Matrix
) -> npt.NDArray[np.int64]:
    """Each query's rank of its best relevant chunk: how many chunks score strictly higher."""
    scores = queries @ corpus.T
    best = np.array([scores[i, rows].max() for i, rows in enumerate(relevant)])
    ranks: npt.NDArray[np.int64] = (scores > best[:, None]).sum(axis=1)
    return ranks


@attrs.frozen
class Paired:
    """The same questions without and with a model: hits at k (1 or 0 per question)."""

    without: dict[int, npt.NDArray[np.int8]]
    with_model: dict[int, npt.NDArray[np.int8]]

    @classmethod
    def of(cls, without: npt.NDArray[np.int64], with_model: npt.NDArray[np.int64]) -> Paired:
        return cls(
            {k: (without < k).astype(np.int8) for k in (1, 10)},
            {k: (with_model < k).astype(np.int8) for k in (1, 10)},
        )

    @classmethod
    def concat(cls, parts: Sequence[Paired]) -> Paired:
        return cls(
            {k: np.concatenate([p.without[k] for p in parts]) for k in (1, 10)},
            {k: np.concatenate([p.with_model[k] for p in parts]) for k in (1, 10)},
        )

    @property
    def questions(self) -> int:
        return len(self.without[1])

    def recall(self, k: int, with_model: bool) -> float:
        return float((self.with_model if with_model else self.without)[k].mean())

    def won(self, k: int) -> int:
        return int(((self.with_model[k] == 1) & (self.without[k] == 0)).sum())

    def lost(self, k: int) -> int:
        return int(((self.with_model[k] == 0) & (self.without[k] == 1)).sum())

    def interval(self, k: int, seed: int = 0) -> tuple[float, float]:
        """Paired bootstrap 95% interval of the change in recall@k, in points."""
        diff = self.with_model[k].astype(np.float64) - self.without[k]
        rng = np.random.default_rng(seed)
        means = diff[rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        return float(low) * 100, float(high) * 100

    @property
    def loses(self) -> bool:
        """More questions lost than won at recall@1 or @10."""
        return any(self.lost(k) > self.won(k) for k in (1, 10))

    @property
    def helps(self) -> bool:
        """Loses at neither k and wins more than it loses at one of them."""
        return not self.loses and any(self.won(k) > self.lost(k) for k in (1, 10))

    def served(self, enabled: bool) -> Paired:
        """What the user gets: the model only when it was enabled."""
        return self if enabled else Paired(self.without, self.without)


@attrs.frozen
class ModelResult:
    embedder: str
    generator: str
    corpus: str
    seed: int
    pairs: int
    chunks: int
    enabled: bool
    reason: str | None
    train_s: float
    paired: Paired
    metrics: dict[str, object]
    # questions the filter turned down, by reason (a filtered generator only)
    rejected: dict[str, int] = attrs.field(factory=dict)


def results_json(results: Sequence[ModelResult]) -> list[dict[str, object]]:
    """Every model's verdict, the trainer's own figures (held-out questions and queries like
    people's, won and lost at each guarded k) and each human question's hits at 1 and 10
    without and with it: what a judge can be scored against without training again."""
    return [
        {
            "embedder": r.embedder,
            "generator": r.generator,
            "corpus": r.corpus,
            "seed": r.seed,
            "pairs": r.pairs,
            "chunks": r.chunks,
            "enabled": r.enabled,
            "reason": r.reason,
            "trainer": r.metrics,
            "human": {
                f"{side}@{k}": hits[k].tolist()
                for side, hits in (("without", r.paired.without), ("with", r.paired.with_model))
                for k in (1, 10)
            },
        }
        for r in results
    ]


class CachedEmbedder:
    """The embedder, remembering every text it embedded: the corpora share chunks and the
    seeds share questions, and embedding (MiniLM's especially) dominates the bench time.
    With a `folder`, the vectors are also kept there between runs (they depend on the text
    alone)."""

    def __init__(self, inner: Embedder, folder: Path | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimension = inner.dimension
        self._vectors: dict[str, npt.NDArray[np.float32]] = {}
        self._file = None if folder is None else folder / f"{self.name}-{self.dimension}.npz"
        if self._file is not None and self._file.exists():
            with np.load(self._file) as saved:
                texts = json.loads(str(saved["texts"]))
                self._vectors = dict(zip(texts, saved["vectors"], strict=True))
        self._saved = len(self._vectors)

    async def embed(self, texts: Sequence[str]) -> Matrix:
        new = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if new:
            for text, vector in zip(new, await self.inner.embed(new), strict=True):
                self._vectors[text] = vector
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._vectors[t] for t in texts])

    async def aclose(self) -> None:
        if self._file is not None and len(self._vectors) > self._saved:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            texts = list(self._vectors)
            np.savez(
                self._file, texts=json.dumps(texts), vectors=np.stack(list(self._vectors.values()))
            )
        await self.inner.aclose()


_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{2,}")
_TEMPLATES = (
    "What does the text say about {a}?",
    "How is {a} related to {b}?",
    "What is the role of {a} in {b}?",
    "Why does {a} matter when working with {b}?",
    "What should someone know about {a}?",
    "How does {a} work?",
    "When is {a} used together with {b}?",
    "What is described about {a} and {b}?",
    "Which details are given about {a}?",
    "What happens with {a} according to the passage on {b}?",
)


class TemplateQuestionGenerator:
    """The offline generator as it was before it wrote queries people would type: the
    chunk's most frequent terms in fixed question templates. Kept here only as the
    benchmark's baseline."""

    name = "templates"

    async def generate(self, chunk: Chunk, count: int) -> list[str]:
        words = [w.lower() for w in _WORD.findall(chunk.text)]
        counts = Counter(w for w in words if w not in STOPWORDS)
        first_seen = {w: i for i, w in reversed(list(enumerate(words)))}
        terms = sorted(counts, key=lambda w: (-counts[w], first_seen[w]))[: max(2, count + 1)]
        terms = terms or ["this passage"]
        questions: list[str] = []
        for i in range(count):
            a = terms[i % len(terms)]
            b = terms[(i + 1) % len(terms)] if len(terms) > 1 else "the passage"
            question = _TEMPLATES[i % len(_TEMPLATES)].format(a=a, b=b)
            if question in questions:
                question = f"{question[:-1]} (detail {i + 1})?"
            questions.append(question)
        return questions

    async def aclose(self) -> None:
        return None


class CachedQuestionGenerator:
    """Questions written earlier for each chunk, read from a JSON object of chunk text →
    questions (a file, or a folder of such files): an LLM's answers kept so a benchmark
    need not wait hours for a CPU model. A chunk with no entry stops the benchmark: the
    answers were made for other chunks (another chunking, another corpus)."""

    def __init__(self, name: str, source: Path) -> None:
        self.name = name
        self.source = source
        files = sorted(source.glob("*.json")) if source.is_dir() else [source]
        self.questions: dict[str, list[str]] = {}
        for path in files:
            found = json.loads(path.read_text())
            if not isinstance(found, dict) or not all(
                isinstance(q, list) and all(isinstance(x, str) for x in q) for q in found.values()
            ):
                raise SystemExit(f"{path}: expected a JSON object of chunk text → questions")
            self.questions.update(found)
        if not self.questions:
            raise SystemExit(f"{source}: no cached questions")

    async def generate(self, chunk: Chunk, count: int, lane: object = None) -> list[str]:
        found = self.questions.get(chunk.text)
        if found is None:
            raise SystemExit(
                f"{self.source}: no questions for the chunk {chunk.text[:60]!r}… (they were "
                "written for another corpus or chunking)"
            )
        return found[:count]

    async def aclose(self) -> None:
        return None


class MixedGenerator:
    """Each part's questions for a chunk, together (duplicates once): `count` from each, so
    a chunk gets up to `count` times the parts' number of questions."""

    def __init__(self, parts: Sequence[QuestionGenerator]) -> None:
        self.parts = list(parts)
        self.name = "+".join(p.name for p in self.parts)

    async def generate(self, chunk: Chunk, count: int, lane: object = None) -> list[str]:
        questions: list[str] = []
        for part in self.parts:
            questions += await part.generate(chunk, count)
        return list(dict.fromkeys(questions))

    async def aclose(self) -> None:
        for part in self.parts:
            await part.aclose()


def live_llm(base_url: str, model: str) -> LLMQuestionGenerator:
    """The service's own generator, asking the OpenAI-compatible server at `base_url`
    (DEEPMEMORY_LLM_API_KEY from the environment, when the server wants one)."""
    overrides = {"llm.base_url": base_url} | ({"llm.model": model} if model else {})
    return LLMQuestionGenerator(load_settings(overrides=overrides).llm)


class FilteredGenerator:
    """The inner generator's questions, then only those the service's question checks keep,
    checked as a run checks one answer (`question_checks.check_answer`, the run's
    `RoundTrip` and `after_round_trip`, chunk by chunk, the prompt's example held as asked
    already): per
    question (not a question, about the text itself, copied from the chunk, asked already
    of another chunk), then the round trip (the base embedder ranks its chunk in the top
    `ROUND_TRIP_K` of the corpus). Nothing is asked again, and a chunk that passed nothing
    keeps nothing: this measures what the checks alone do to cached answers."""

    def __init__(self, inner: QuestionGenerator) -> None:
        self.inner = inner
        self.name = f"{inner.name}-filtered"
        self.rejected: Counter[str] = Counter()

    async def generate(self, chunk: Chunk, count: int, lane: object = None) -> list[str]:
        return await self.inner.generate(chunk, count)

    async def keep(
        self,
        questions: list[str],
        rows: list[int],
        texts: Sequence[str],
        embedder: CachedEmbedder,
        corpus: Matrix,
    ) -> tuple[list[str], list[int]]:
        """The questions (and their chunk rows) that pass every check, in order; `rows`
        holds each chunk's questions together, as asked."""
        self.rejected = Counter()
        keys = {duplicate_key(q) for q in LLMQuestionGenerator.examples}
        # the run's round trip over these chunks (a chunk's id is its row here); embedded
        # in one batch first, so that its calls chunk by chunk find every vector cached
        ids = np.arange(len(corpus), dtype=np.int64)
        round_trip = RoundTrip(embedder, ROUND_TRIP_K, corpus, ids, ids)
        await embedder.embed([q.strip() for q in questions])
        kept: list[str] = []
        kept_rows: list[int] = []
        for row, answer in itertools.groupby(zip(questions, rows, strict=True), lambda q: q[1]):
            passing, rejected = check_answer([q for q, _ in answer], texts[row], keys)
            if passing:
                found = await round_trip.kept(row, passing)
                passing, missed = after_round_trip(passing, found, keys)
                rejected += missed
            self.rejected.update(str(r.reason) for r in rejected)
            kept += passing
            kept_rows += [row] * len(passing)
        return kept, kept_rows

    async def aclose(self) -> None:
        await self.inner.aclose()


async def record_llm_questions(
    corpora: Sequence[Corpus],
    generator: CheckedGenerator,
    questions: QuestionSettings,
    embedder: Embedder,
    count: int,
    path: Path,
) -> RecordTally:
    """Asks a live server for every chunk of `corpora` that `path` (a JSON object of chunk
    text → questions) lacks, as a run asks (`runs/questioning.py`: the checks, asking
    again with what was wrong, the round trip with `embedder` over the corpus), and keeps
    each chunk's questions in `path` as soon as they come: a run stopped halfway goes on
    from where it was. The chunks are asked all at once; the generator holds the calls to
    the server's slots."""
    recorded = _read_recorded(path)
    tally = RecordTally()
    for corpus in corpora:
        missing = [i for i, text in enumerate(corpus.chunks) if text not in recorded]
        if not missing:
            continue
        vectors = await embedder.embed(corpus.chunks)
        rows = np.arange(len(corpus.chunks), dtype=np.int64)
        asker = Asker(
            generator,
            questions,
            RoundTrip(embedder, questions.round_trip_k, vectors, rows + 1, rows)
            if questions.round_trip_k
            else None,
            tally=tally.checks,
        )
        # a chunk recorded earlier holds its questions' keys, as a proceed's run does
        asker.keys.update(
            duplicate_key(q) for text in corpus.chunks for q in recorded.get(text, [])
        )
        started = time.monotonic()
        chunks = [Chunk(row + 1, corpus.chunks[row]) for row in missing]
        asking = asyncio.as_completed([_ask(asker, c, count) for c in chunks])
        for done, task in enumerate(asking, 1):
            chunk, asked = await task
            if asked is None:
                tally.failed += 1
                continue
            recorded[chunk.text] = asked
            _write_recorded(path, recorded)
            if done % 10 == 0 or done == len(missing):
                print(
                    f"  {corpus.name}: {done}/{len(missing)} chunks asked, "
                    f"{time.monotonic() - started:.0f}s",
                    file=sys.stderr,
                )
        tally.chunks += len(missing)
    return tally


async def _ask(asker: Asker, chunk: Chunk, count: int) -> tuple[Chunk, list[str] | None]:
    """The chunk's questions, or None when the server failed it (every retry spent)."""
    try:
        return chunk, await asker.ask(chunk, count, None)
    except GenerationError as exc:
        print(f"  chunk {chunk.id}: failed ({exc})", file=sys.stderr)
        return chunk, None


def _read_recorded(path: Path) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    found = json.loads(path.read_text())
    if not isinstance(found, dict):
        raise SystemExit(f"{path}: expected a JSON object of chunk text → questions")
    return found


def _write_recorded(path: Path, recorded: dict[str, list[str]]) -> None:
    """`recorded` in `path`, whole or not at all (written beside it, then renamed)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(recorded, indent=1, ensure_ascii=False))
    tmp.replace(path)


@attrs.define
class RecordTally:
    """What asking a live server did: chunks asked and failed, and the checks' tally (one
    for every corpus's Asker)."""

    chunks: int = 0
    failed: int = 0
    checks: Tally = attrs.field(factory=Tally)

    def __str__(self) -> str:
        c = self.checks
        turned_down = ", ".join(f"{r} {n}" for r, n in sorted(c.rejections.items()) if n)
        return (
            f"{self.chunks} chunks asked, {self.failed} failed; asked again {c.reasks} "
            f"times, {c.short_chunks} chunks left short; turned down: {turned_down or 'none'}"
        )


GENERATORS = "offline, templates, llm, llm-filtered, llm+offline"


def generator_named(name: str, llm_questions: Path | None = None) -> QuestionGenerator:
    """A generator by its name; the llm ones read `llm_questions` (chunk text → questions)."""

    def llm() -> QuestionGenerator:
        if llm_questions is None:
            raise SystemExit(f"the {name} generator needs --llm-questions PATH or --llm-url URL")
        return CachedQuestionGenerator("llm", llm_questions)

    if name == "offline":
        return OfflineQuestionGenerator()
    if name == "templates":
        return TemplateQuestionGenerator()
    if name == "llm":
        return llm()
    if name == "llm-filtered":
        return FilteredGenerator(llm())
    if name == "llm+offline":
        return MixedGenerator([llm(), OfflineQuestionGenerator()])
    raise SystemExit(f"unknown generator {name!r}: one of {GENERATORS}")


def run_id(seed: int) -> uuid.UUID:
    """The run id seeds the trainer's split and initialisation."""
    return uuid.UUID(f"00000000-0000-4000-8000-{0xBEC + seed:012x}")


async def _quiet(update: TrainingProgress) -> None:
    return None


async def bench_corpus(
    corpus: Corpus,
    embedder: CachedEmbedder,
    generator: QuestionGenerator,
    questions_per_chunk: int,
    seeds: Sequence[int],
    settings: Settings,
    workdir: Path,
) -> list[ModelResult]:
    ids = list(range(1, len(corpus.chunks) + 1))
    store = ChunkStore(
        str(workdir / f"{embedder.name}-{generator.name}-{corpus.name}"),
        embedder.name,
        embedder.dimension,
    )
    vectors = await embedder.embed(corpus.chunks)
    await store.append(Rows(ids, corpus.chunks, vectors, [{} for _ in ids]))
    questions: list[str] = []
    chunk_ids: list[int] = []
    for chunk_id, text in zip(ids, corpus.chunks, strict=True):
        for q in await generator.generate(Chunk(chunk_id, text), questions_per_chunk):
            questions.append(q)
            chunk_ids.append(chunk_id)
    rejected: dict[str, int] = {}
    if isinstance(generator, FilteredGenerator):
        rows = [i - 1 for i in chunk_ids]
        questions, rows = await generator.keep(questions, rows, corpus.chunks, embedder, vectors)
        chunk_ids = [r + 1 for r in rows]
        rejected = dict(generator.rejected)
    human = await embedder.embed(corpus.questions)
    without = any_hit_ranks(human, corpus.relevant, vectors)
    results = []
    for seed in seeds:
        trainer = LocalTrainer(settings.train)
        started = time.monotonic()
        request = TrainingRequest(uuid.uuid4(), run_id(seed), questions, chunk_ids, store, embedder)
        try:
            trained = await trainer.train_model(request, _quiet)
        except TrainingError as exc:
            # e.g. a filter that kept too few questions: no model, search as it was
            trained = Trained(None, TrainingOutcome({}, False, f"not trained: {exc}"))
        train_s = time.monotonic() - started
        weights = trained.weights
        with_model = (
            without
            if weights is None
            else any_hit_ranks(weights.apply(human), corpus.relevant, vectors)
        )
        results.append(
            ModelResult(
                embedder.name,
                generator.name,
                corpus.name,
                seed,
                len(questions),
                len(corpus.chunks),
                trained.outcome.can_enable,
                trained.outcome.reason,
                train_s,
                Paired.of(without, with_model),
                trained.outcome.metrics,
                rejected,
            )
        )
        print(
            f"  {embedder.name} {generator.name} {corpus.name} seed {seed}: {train_s:.0f}s, "
            f"{'enabled' if trained.outcome.can_enable else 'refused'}",
            file=sys.stderr,
        )
    return results


def _points(paired: Paired, k: int) -> str:
    a, b = paired.recall(k, False), paired.recall(k, True)
    return f"{a:.3f} → {b:.3f} ({(b - a) * 100:+.1f})"


def _interval(paired: Paired, k: int) -> str:
    low, high = paired.interval(k)
    return f"[{low:+.1f}, {high:+.1f}]"


def model_row(r: ModelResult) -> str:
    p = r.paired
    verdict = "enabled" if r.enabled else "refused"
    mark = " **loses**" if p.loses else ""
    return (
        f"| {r.embedder} | {r.generator} | {r.corpus} | {r.seed} | {p.questions} | "
        f"{_points(p, 1)} | {p.won(1)}/{p.lost(1)} | {_interval(p, 1)} | "
        f"{_points(p, 10)} | {p.won(10)}/{p.lost(10)} | {verdict}{mark} | {r.train_s:.0f}s |"
    )


MODEL_HEADER = (
    "| embedder | generator | corpus | seed | questions | recall@1 without → with | "
    "won/lost @1 | 95% CI @1 (points) | recall@10 without → with | won/lost @10 | "
    "trainer | train time |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def summary_row(label: str, paired: Paired) -> str:
    return (
        f"| {label} | {paired.questions} | {_points(paired, 1)} | {paired.won(1)}/{paired.lost(1)} "
        f"| {_interval(paired, 1)} | {_points(paired, 10)} | {paired.won(10)}/{paired.lost(10)} "
        f"| {_interval(paired, 10)} |"
    )


SUMMARY_HEADER = (
    "| models | questions | recall@1 without → with | won/lost @1 | 95% CI @1 | "
    "recall@10 without → with | won/lost @10 | 95% CI @10 |\n|---|---|---|---|---|---|---|---|"
)


def report(results: list[ModelResult], collections: list[str], dev: Sequence[str]) -> None:
    print(
        "\nEvery model: the human questions without → with the model as trained "
        "(refused ones too)\n"
    )
    print(MODEL_HEADER)
    for r in results:
        print(model_row(r))

    refused = [r for r in results if not r.enabled]
    if refused:
        print("\nWhy the trainer refused a model\n")
        for r in refused:
            print(f"- {r.embedder}, {r.generator}, {r.corpus}, seed {r.seed}: {r.reason}")

    filtered = {(r.embedder, r.generator, r.corpus): r for r in results if r.rejected}
    if filtered:
        print("\nQuestions the filter turned down (kept: the pairs trained on)\n")
        for (embedder, generator, corpus), r in sorted(filtered.items()):
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.rejected.items()))
            print(f"- {embedder}, {generator}, {corpus}: kept {r.pairs}; turned down: {reasons}")

    groups = sorted({(r.embedder, r.generator) for r in results})
    seeds = sorted({r.seed for r in results})
    print(
        "\nAll human questions of the collections, each collection's own model (per seed: "
        "as trained; as served, i.e. only enabled models applied)\n"
    )
    print(SUMMARY_HEADER)
    for embedder, generator in groups:
        for seed in seeds:
            mine = [
                r
                for r in results
                if (r.embedder, r.generator, r.seed) == (embedder, generator, seed)
                and r.corpus in collections
            ]
            if not mine:
                continue
            trained = Paired.concat([r.paired for r in mine])
            served = Paired.concat([r.paired.served(r.enabled) for r in mine])
            label = f"{embedder}, {generator}, seed {seed}"
            print(summary_row(f"{label}, as trained", trained))
            print(summary_row(f"{label}, as served", served))
            held = [r for r in mine if r.corpus not in dev]
            if dev and held:
                print(
                    summary_row(
                        f"{label}, as trained, collections not developed on",
                        Paired.concat([r.paired for r in held]),
                    )
                )

    print("\nGoals\n")
    for embedder in sorted({r.embedder for r in results}):
        for generator in sorted({r.generator for r in results}):
            mine = [r for r in results if (r.embedder, r.generator) == (embedder, generator)]
            if not mine:
                continue
            enabled = [r for r in mine if r.enabled]
            losing = [r for r in enabled if r.paired.loses]
            helping = [r for r in mine if r.paired.helps]
            refused_helping = [r for r in helping if not r.enabled]
            seconds = [r.train_s for r in mine]
            print(
                f"- {embedder}, {generator}: {len(mine)} models, {len(enabled)} enabled; "
                f"enabled and losing on the human questions: {len(losing)}"
                + (f" ({', '.join(f'{r.corpus} seed {r.seed}' for r in losing)})" if losing else "")
                + f"; helping: {len(helping)}, of which refused: {len(refused_helping)}"
                + (
                    f" ({', '.join(f'{r.corpus} seed {r.seed}' for r in refused_helping)})"
                    if refused_helping
                    else ""
                )
                + f"; training time median {np.median(seconds):.1f}s, max {max(seconds):.1f}s"
            )
    generators = sorted({r.generator for r in results})
    if len(generators) > 1:
        print("\nGenerators compared (collections' own models as trained, mean over seeds):\n")
        for embedder in sorted({r.embedder for r in results}):
            means = {}
            for generator in generators:
                per_seed = []
                for seed in seeds:
                    mine = [
                        r.paired
                        for r in results
                        if (r.embedder, r.generator, r.seed) == (embedder, generator, seed)
                        and r.corpus in collections
                    ]
                    if mine:
                        per_seed.append(Paired.concat(mine).recall(1, True))
                means[generator] = float(np.mean(per_seed)) if per_seed else float("nan")
            print(
                f"- {embedder}: recall@1 with the model "
                + ", ".join(f"{g} {v:.3f}" for g, v in means.items())
            )
