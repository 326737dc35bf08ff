"""The local trainer: Deep Memory's idea on this machine, in numpy.

It learns a residual transform of query embeddings (`adapter.py`), starting at the
identity and pulled toward it (measured lesson: a free full map over-fits synthetic
questions and makes human queries worse), with InfoNCE over hard negatives mined from the
corpus itself (`optimiser.py`).

The pairs are split three ways by the run's seed, each chunk keeping a question for
training: test questions are held out first and only measure the chosen model (the
reported figures); validation questions, held out of the rest, pick the epoch, the shrink
toward the identity and the model's shape (`fitting.py`). Because synthetic held-out
recall can rise while plain queries get worse (measured lesson), guards use the chunks'
own text (`query_sets.py`): phrases cut from the training chunks are trained on as
anchors; phrases from, and headings of, the held-out chunks are query sets that no kept
epoch may lose more queries than it wins on, at recall@1 or recall@10, and the enable
check repeats that with other phrases of the test chunks. A model that evaluates worse
than no model on any of them is reported, with the reason, and may not be enabled.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import attrs
import numpy as np

from deepmemory_service.adapter import Adapter, AdapterCache, Weights, model_path, save_adapter
from deepmemory_service.config import TrainSettings
from deepmemory_service.embedders import Embedder, Matrix
from deepmemory_service.fitting import SHAPES, Fit, TrainingData, fit
from deepmemory_service.query_sets import (
    MINING_POOL,
    QuerySet,
    at_most,
    eval_view,
    heading_queries,
    probe_phrases,
    split_three,
)
from deepmemory_service.ranking import Evaluation, Ranks, Recalls, mean_recall, ranks_of
from deepmemory_service.store import ChunkStore, CorpusReader, StoreError
from deepmemory_service.trainers import (
    Reporter,
    TrainingError,
    TrainingOutcome,
    TrainingProgress,
    TrainingRequest,
)
from deepmemory_service.vector_search import SearchResult, nearest_chunks

MIN_PAIRS = 10


@attrs.frozen
class Bounds:
    """What keeps a large run in bounded memory and time: question sets (and the chunks
    guards are made of) are seeded samples where they are larger than these; hard negatives
    are mined from, and epochs are chosen against, a sample of a larger corpus (the
    reported test figures rank against all of it)."""

    train_queries: int = 10_000
    eval_queries: int = 1_000
    mining_pool: int = MINING_POOL


@attrs.define
class _ProgressBridge:
    """Carries the fitting thread's progress to the event loop, at most five reports a
    second (and every shape's last epoch)."""

    loop: asyncio.AbstractEventLoop
    epochs: int
    queue: asyncio.Queue[TrainingProgress | None] = attrs.field(factory=asyncio.Queue)
    last: float = 0.0

    def post(self, model: int, epoch: int, loss: float, evaluated: Recalls) -> None:
        """Called in the fitting thread."""
        now = time.monotonic()
        if now - self.last < 0.2 and epoch < self.epochs:
            return
        self.last = now
        # each shape may stop early: the bar moves on to the next shape's share
        step = model * self.epochs + epoch
        update = TrainingProgress(
            f"Model {model + 1}/{len(SHAPES)}, epoch {epoch}/{self.epochs}: loss {loss:.3f}, "
            f"validation recall@10 {evaluated['recall@10']:.2f}",
            step / (len(SHAPES) * self.epochs),
            {"model": model + 1, "epoch": epoch, "step": step, "loss": round(loss, 4)} | evaluated,
        )
        self.loop.call_soon_threadsafe(self.queue.put_nowait, update)

    def close(self) -> None:
        self.queue.put_nowait(None)

    async def forward(self, report: Reporter) -> None:
        while (update := await self.queue.get()) is not None:
            await report(update)


@attrs.frozen
class _Guards:
    """Queries unlike the generated questions, from chunks' own text."""

    phrases: QuerySet
    headings: QuerySet


@attrs.frozen
class Evaluations:
    """The chosen model on what chose nothing: the test questions and the test chunks'
    guards."""

    test: Evaluation
    phrases: Evaluation | None
    headings: Evaluation | None

    def as_json(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "without_model": self.test.without,
            "with_model": self.test.with_model,
        }
        for prefix, evaluation in (("probe_", self.phrases), ("headings_", self.headings)):
            if evaluation is not None:
                metrics[f"{prefix}without_model"] = evaluation.without
                metrics[f"{prefix}with_model"] = evaluation.with_model
                metrics[f"{prefix}changes"] = evaluation.changes_json()
        return metrics


def _evaluate(weights: Weights | None, queries: QuerySet, corpus: Matrix) -> Evaluation:
    without = ranks_of(queries.q, queries.pos, corpus)
    with_model = (
        without if weights is None else ranks_of(weights.apply(queries.q), queries.pos, corpus)
    )
    return Evaluation.of(without, with_model)


def _evaluate_all(
    weights: Weights | None, test: QuerySet, guards: _Guards, corpus: Matrix
) -> Evaluations:
    return Evaluations(
        _evaluate(weights, test, corpus),
        _evaluate(weights, guards.phrases, corpus) if len(guards.phrases) else None,
        _evaluate(weights, guards.headings, corpus) if len(guards.headings) else None,
    )


def refusal(fitted: Fit, evaluations: Evaluations) -> str | None:
    """Why this model may not be enabled, or None. Never enable a model that evaluates
    worse than no model: on the held-out test questions (recall@1, or no better on
    average), or at recall@1 or recall@10 on the phrases or the headings of the
    held-out chunks (more of them lost than won)."""
    test = evaluations.test
    with_m, without = test.with_model, test.without
    if (
        fitted.weights is None
        or with_m["recall@1"] < without["recall@1"]
        or mean_recall(with_m) <= mean_recall(without)
    ):
        blocked = (
            " (every epoch that did better on validation questions did worse on phrases "
            "from, or headings of, the held-out chunks)"
            if fitted.weights is None and any(r.guard_blocked for r in fitted.tried)
            else ""
        )
        return (
            f"the trained model scored recall@1 {with_m['recall@1']:.2f} and recall@10 "
            f"{with_m['recall@10']:.2f} on held-out questions, against "
            f"{without['recall@1']:.2f} and {without['recall@10']:.2f} without it{blocked}"
        )
    for evaluation, what in (
        (evaluations.phrases, "phrases from the held-out chunks"),
        (evaluations.headings, "the held-out chunks' headings"),
    ):
        if evaluation is None or not evaluation.hurts:
            continue
        counts = ", ".join(f"recall@{c.k}: {c.lost} lost, {c.won} won" for c in evaluation.changes)
        return (
            f"the trained model scored recall@1 {evaluation.with_model['recall@1']:.2f} and "
            f"recall@10 {evaluation.with_model['recall@10']:.2f} on {what}, against "
            f"{evaluation.without['recall@1']:.2f} and {evaluation.without['recall@10']:.2f} "
            f"without it ({counts})"
        )
    return None


@attrs.frozen
class Trained:
    """A local training's result: the chosen weights (None when no shape beat no model),
    kept even when the verdict refuses them, so a benchmark can measure what was refused."""

    weights: Weights | None
    outcome: TrainingOutcome


class LocalTrainer:
    name = "local"

    def __init__(self, settings: TrainSettings, bounds: Bounds = Bounds()) -> None:
        self.settings = settings
        self.bounds = bounds
        self.models = AdapterCache()

    async def train(self, request: TrainingRequest, report: Reporter) -> TrainingOutcome:
        """Train, judge, and save the model beside the store when it may be enabled."""
        trained = await self.train_model(request, report)
        if trained.weights is not None and trained.outcome.can_enable:
            adapter = Adapter(trained.weights, request.store.embedder, str(request.run_id))
            await asyncio.get_running_loop().run_in_executor(
                None, save_adapter, model_path(request.store), adapter, trained.outcome.metrics
            )
        return trained.outcome

    async def train_model(self, request: TrainingRequest, report: Reporter) -> Trained:
        """Train and judge a model; nothing is saved."""
        store = request.store
        if store.is_cloud:
            raise TrainingError("the local trainer needs a local vector store, not a hub:// one")
        if len(request.questions) < MIN_PAIRS:
            raise TrainingError(
                f"too few pairs to train on: {len(request.questions)} (at least {MIN_PAIRS})"
            )
        try:
            snapshot = await request.read_corpus()
        except StoreError as exc:
            raise TrainingError(str(exc)) from None
        ids, corpus, texts = snapshot.ids, snapshot.vectors, list(snapshot.texts)
        if len(ids) == 0:
            raise TrainingError("the vector store holds no chunks")
        row_of = {int(c): i for i, c in enumerate(ids)}
        keep = [i for i, c in enumerate(request.chunk_ids) if c in row_of]
        if len(keep) < MIN_PAIRS:
            raise TrainingError(
                f"only {len(keep)} of {len(request.chunk_ids)} pairs refer to chunks in the "
                "vector store"
            )
        rows = np.array([row_of[request.chunk_ids[i]] for i in keep], dtype=np.int64)
        seed = uuid.UUID(str(request.run_id)).int % 2**32
        test, valid = split_three(rows, self.settings.holdout, seed)
        # a large run trains and measures on seeded samples; only those are embedded
        rng = np.random.default_rng(seed + 3)
        bounds = self.bounds
        train_i = at_most(np.flatnonzero(~(test | valid)), bounds.train_queries, rng)
        valid_i = at_most(np.flatnonzero(valid), bounds.eval_queries, rng)
        test_i = at_most(np.flatnonzero(test), bounds.eval_queries, rng)
        embedded = await request.embedder.embed(
            [request.questions[keep[i]] for i in np.concatenate([train_i, valid_i, test_i])]
        )
        if embedded.shape[1] != corpus.shape[1]:
            raise TrainingError(
                f"query vectors have dimension {embedded.shape[1]} but the store holds "
                f"{corpus.shape[1]}: the embedder changed since ingestion"
            )
        train_q, valid_q, test_q = np.split(embedded, [len(train_i), len(train_i) + len(valid_i)])
        loop = asyncio.get_running_loop()
        embedder = request.embedder

        test_rows, valid_rows = np.unique(rows[test_i]), np.unique(rows[valid_i])
        test_guards = await _guards(
            embedder, texts, at_most(test_rows, bounds.eval_queries, rng), seed
        )
        # epochs are kept only if they hurt no guard of any held-out chunk; the final check
        # repeats it with other phrases of the test chunks
        valid_guards = await _guards(
            embedder,
            texts,
            at_most(np.union1d(valid_rows, test_rows), bounds.eval_queries, rng),
            seed + 2,
        )
        # anchors: phrases from the training questions' chunks, trained on alongside them,
        # so the adapter learns what the questions share without unlearning plain queries
        train_rows = rows[train_i]
        anchor_rows = at_most(np.unique(train_rows), bounds.train_queries // 4, rng)
        anchor_q = await embedder.embed(
            probe_phrases([texts[int(r)] for r in anchor_rows], seed + 1)
        )
        eval_corpus, (valid_set, valid_phrases, valid_headings) = await loop.run_in_executor(
            None,
            eval_view,
            corpus,
            [QuerySet(valid_q, rows[valid_i]), valid_guards.phrases, valid_guards.headings],
            rng,
            bounds.mining_pool,
        )
        data = TrainingData(
            QuerySet(
                np.concatenate([train_q, anchor_q]), np.concatenate([train_rows, anchor_rows])
            ),
            corpus,
            eval_corpus,
            valid_set,
            (valid_phrases, valid_headings),
            bounds.mining_pool,
        )

        bridge = _ProgressBridge(loop, self.settings.epochs)
        stop = threading.Event()
        forwarder = asyncio.create_task(bridge.forward(report))
        try:
            fitted = await loop.run_in_executor(
                None, fit, data, self.settings.epochs, seed, stop, bridge.post
            )
        finally:
            # a timeout cancels this coroutine; the numpy thread stops at its next epoch
            stop.set()
            bridge.close()
            await forwarder
        # the reported figures: test questions and guards, which chose nothing
        evaluations = await loop.run_in_executor(
            None,
            _evaluate_all,
            fitted.weights,
            QuerySet(test_q, rows[test_i]),
            test_guards,
            corpus,
        )
        metrics = fitted.as_json() | evaluations.as_json()
        metrics.update(
            train_pairs=len(data.train),
            eval_queries=len(test_q),
            eval_chunks=len(test_rows),
            probe_queries=len(test_guards.phrases),
            heading_queries=len(test_guards.headings),
            corpus_chunks=len(ids),
            embedder=store.embedder,
        )
        reason = refusal(fitted, evaluations)
        enabled = fitted.weights is not None and reason is None
        return Trained(fitted.weights, TrainingOutcome(metrics, enabled, reason))

    async def query_model(self, store: ChunkStore) -> LocalQueryModel | None:
        if store.is_cloud:
            return None
        adapter = await self.models.load(store)
        return None if adapter is None else LocalQueryModel(adapter, store)

    async def aclose(self) -> None:
        return None


async def _guards(embedder: Embedder, texts: list[str], chunk_rows: Ranks, seed: int) -> _Guards:
    """Queries unlike the generated questions, from these chunks' own text: phrases cut
    from them, and their headings (when they have any)."""
    chunk_texts = [texts[int(r)] for r in chunk_rows]
    phrases = await embedder.embed(probe_phrases(chunk_texts, seed))
    titles, title_rows = heading_queries(chunk_texts, chunk_rows)
    titled = (
        await embedder.embed(titles)
        if titles
        else np.zeros((0, phrases.shape[1]), dtype=np.float32)
    )
    return _Guards(
        QuerySet(phrases, chunk_rows), QuerySet(titled, np.array(title_rows, dtype=np.int64))
    )


@attrs.frozen
class LocalQueryModel:
    """The adapter in front of the store's own nearest-chunk search."""

    adapter: Adapter
    store: ChunkStore

    async def search(self, query: Matrix, k: int, corpus: CorpusReader) -> list[SearchResult]:
        return await nearest_chunks(corpus, self.adapter.apply(query), k)
