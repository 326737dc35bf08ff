"""The local trainer: Deep Memory's idea on this machine, in numpy.

It learns a residual transform of query embeddings (`adapter.py`), starting at the
identity and pulled toward it (measured lesson: a free full map over-fits synthetic
questions and makes human queries worse), with InfoNCE over hard negatives mined from the
corpus itself (`optimiser.py`).

The pairs are split three ways by the run's seed: test questions are held out first and
only measure the chosen model (the reported figures); validation questions, held out of the
rest, help pick the epoch, the shrink toward the identity and the model's shape
(`fitting.py`). Chunks keep a question for training where they have two or more; with one
question per chunk, whole chunks' questions are held out. Three members are trained, each
on its own validation split and start, and the run's model is their average
(`Weights.mean`): one model is one draw of the split, and measured on questions people
wrote the average found more of them (fewer members for a large run, `members_within`).

Measured on 1,110 questions people wrote: held-out generated questions can improve while
people's searches get worse, so the trainer also judges queries like people's, cut from the
chunks' own text and never a question it trained on (`query_sets.plain_queries`). Half the
chunks' such queries take part in choosing the model (no kept epoch may lose more of them
than it wins at recall@1 or @10); the other half's, with the test questions, decide whether
it may be enabled (`refusal`): the reason, when not, is a sentence with the figures.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from typing import Any

import attrs
import numpy as np

from deepmemory_service.platform.config import TrainSettings
from deepmemory_service.storage.dataset import StoreError
from deepmemory_service.storage.embedders import Embedder
from deepmemory_service.storage.nearest import Nearest, SearchResult
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.training.adapter import (
    Adapter,
    AdapterCache,
    Weights,
    adapter_bytes,
    model_file,
)
from deepmemory_service.training.blas import limit_blas
from deepmemory_service.training.fitting import SHAPES, Fit, TrainingData, fit
from deepmemory_service.training.query_sets import (
    MINING_POOL,
    QuerySet,
    at_most,
    eval_view,
    held_out,
    member_seed,
    member_splits,
    plain_queries,
)
from deepmemory_service.training.ranking import Evaluation, Ranks, Recalls, ranks_of
from deepmemory_service.training.trainer import (
    Reporter,
    TrainingError,
    TrainingOutcome,
    TrainingProgress,
    TrainingRequest,
)
from deepmemory_service.vectors import Matrix

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
    second (and every shape's last epoch). The models are numbered across the members:
    member 2's first shape of four is model 5."""

    loop: asyncio.AbstractEventLoop
    epochs: int
    members: int = 1
    queue: asyncio.Queue[TrainingProgress | None] = attrs.field(factory=asyncio.Queue)
    last: float = 0.0

    def post(self, member: int, shape: int, epoch: int, loss: float, evaluated: Recalls) -> None:
        """Called in the fitting thread."""
        now = time.monotonic()
        if now - self.last < 0.2 and epoch < self.epochs:
            return
        self.last = now
        # each shape may stop early: the bar moves on to the next shape's share
        model = member * len(SHAPES) + shape
        models = self.members * len(SHAPES)
        step = model * self.epochs + epoch
        update = TrainingProgress(
            f"Model {model + 1}/{models}, epoch {epoch}/{self.epochs}: loss {loss:.3f}, "
            f"validation recall@10 {evaluated['recall@10']:.2f}",
            step / (models * self.epochs),
            {"model": model + 1, "epoch": epoch, "step": step, "loss": round(loss, 4)} | evaluated,
        )
        self.loop.call_soon_threadsafe(self.queue.put_nowait, update)

    def close(self) -> None:
        self.queue.put_nowait(None)

    async def forward(self, report: Reporter) -> None:
        while (update := await self.queue.get()) is not None:
            await report(update)


@attrs.frozen
class Evaluations:
    """The chosen model on what chose nothing: the held-out test questions, and queries
    like people's (`plain_queries`) about the chunks set aside for the final check."""

    test: Evaluation
    plain: Evaluation | None

    def changes_json(self) -> dict[str, Any]:
        """Won and lost at each k on both sets (what the verdict counts)."""
        metrics: dict[str, Any] = {"changes": self.test.changes_json()}
        if self.plain is not None:
            metrics["plain_changes"] = self.plain.changes_json()
        return metrics

    def as_json(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "without_model": self.test.without,
            "with_model": self.test.with_model,
        }
        if self.plain is not None:
            metrics["plain_queries"] = self.plain.queries
            metrics["plain_without_model"] = self.plain.without
            metrics["plain_with_model"] = self.plain.with_model
        return metrics | self.changes_json()


@attrs.frozen
class _Judged:
    """What chose nothing, ranked once without a model: the test questions and (when there
    are any) the queries like people's, against the whole corpus. Each model judged on them
    (the run's average, and each member alone) ranks only its own side."""

    sets: tuple[tuple[QuerySet, Ranks], ...]
    corpus: Matrix

    @classmethod
    def of(cls, test: QuerySet, plain: QuerySet, corpus: Matrix) -> _Judged:
        sets = [test, plain] if len(plain) else [test]
        return cls(tuple((s, ranks_of(s.q, s.pos, corpus)) for s in sets), corpus)

    def evaluate(self, weights: Weights | None) -> Evaluations:
        evaluated = [
            Evaluation.of(
                without,
                without
                if weights is None
                else ranks_of(weights.apply(queries.q), queries.pos, self.corpus),
            )
            for queries, without in self.sets
        ]
        return Evaluations(evaluated[0], evaluated[1] if len(evaluated) > 1 else None)


def _figures(evaluation: Evaluation) -> str:
    w, wo = evaluation.with_model, evaluation.without
    return (
        f"recall@1 {wo['recall@1']:.2f} → {w['recall@1']:.2f} and recall@10 "
        f"{wo['recall@10']:.2f} → {w['recall@10']:.2f}"
    )


def _lost_won(evaluation: Evaluation) -> str:
    return "; ".join(f"recall@{c.k}: {c.won} won, {c.lost} lost" for c in evaluation.changes)


def refusal(fitted: Fit, evaluations: Evaluations) -> str | None:
    """Why this model may not be enabled, or None. A model is enabled only when, on queries
    that chose nothing, it loses no more queries than it wins at recall@1 and at @10, both
    on the held-out generated questions and on queries like people's (sentences and key
    terms of the chunks), and finds more at some recall@k of either: a model that only breaks
    even changes results without improving them."""
    if fitted.weights is None:
        blocked = (
            ": every epoch that did better on the generated questions did worse on "
            "queries like people's"
            if any(r.guard_blocked for r in fitted.tried)
            else ""
        )
        return (
            "No model was better than search without Deep Memory on the validation "
            f"questions{blocked}."
        )
    checks = [(evaluations.test, "held-out generated questions")]
    if evaluations.plain is not None:
        checks.append((evaluations.plain, "held-out queries like people's"))
    for evaluation, what in checks:
        if evaluation.hurts:
            worse = " and @".join(str(c.k) for c in evaluation.changes if c.lost > c.won)
            return (
                f"It lost more searches than it won at recall@{worse} on "
                f"{evaluation.queries} {what} ({_lost_won(evaluation)}): "
                f"{_figures(evaluation)} with it."
            )
    if not any(
        evaluation.with_model[k] > evaluation.without[k]
        for evaluation, _ in checks
        for k in evaluation.without
    ):
        evaluation, what = checks[-1]
        return (
            f"It was no better than search without it on {evaluation.queries} {what}: "
            f"{_figures(evaluation)} with it ({_lost_won(evaluation)})."
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
        self.blas_threads = limit_blas(settings.blas_threads)
        self.bounds = bounds
        self.models = AdapterCache()

    async def train(self, request: TrainingRequest, report: Reporter) -> TrainingOutcome:
        """Train, judge, and keep the model with the store when it may be enabled."""
        trained = await self.train_model(request, report)
        if trained.weights is not None and trained.outcome.can_enable:
            store = request.store
            adapter = Adapter(trained.weights, store.embedder, str(request.run_id))
            data = adapter_bytes(adapter, trained.outcome.metrics)
            try:
                await store.blocking(model_file(store).write, data)
            except StoreError as exc:  # a bucket that cannot be reached just now
                raise TrainingError(f"the trained model could not be kept: {exc.detail}") from None
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
        seed = self.settings.seed or uuid.UUID(str(request.run_id)).int % 2**32
        holdout = self.settings.holdout
        test = held_out(rows, holdout, seed)
        # a large run trains and measures on seeded samples; only those are embedded
        rng = np.random.default_rng(seed + 3)
        bounds = self.bounds
        rest = np.flatnonzero(~test)
        members = members_within(self.settings.members, len(rest), holdout, bounds.train_queries)
        splits = [
            (at_most(train, bounds.train_queries, rng), at_most(valid, bounds.eval_queries, rng))
            for train, valid in member_splits(rows, rest, holdout, seed, members)
        ]
        test_i = at_most(np.flatnonzero(test), bounds.eval_queries, rng)
        asked = np.unique(np.concatenate([test_i, *(np.concatenate(s) for s in splits)]))
        embedded = await request.embedder.embed([request.questions[keep[i]] for i in asked])
        if embedded.shape[1] != corpus.shape[1]:
            raise TrainingError(
                f"query vectors have dimension {embedded.shape[1]} but the store holds "
                f"{corpus.shape[1]}: the embedder changed since ingestion"
            )

        def queries(indexes: Ranks) -> QuerySet:
            return QuerySet(embedded[np.searchsorted(asked, indexes)], rows[indexes])

        loop = asyncio.get_running_loop()
        embedder = request.embedder

        # queries like people's, none of them a question trained on, about the chunks
        # (people ask about the chunks the questions were written for): half the chunks
        # choose epochs and shapes, the other half only judge the chosen model. The order
        # is random, so a large run's first `cap` of each half are its seeded sample (each
        # chunk gives a query or more), and only those chunks are read
        chunk_rows = rng.permutation(np.unique(rows))
        half, cap = len(chunk_rows) // 2, bounds.eval_queries
        trained_on = set(request.questions)
        valid_plain = await _plain(
            embedder, texts, np.sort(chunk_rows[:half][:cap]), seed + 2, trained_on, cap
        )
        test_plain = await _plain(
            embedder, texts, np.sort(chunk_rows[half:][:cap]), seed, trained_on, cap
        )

        bridge = _ProgressBridge(loop, self.settings.epochs, members)
        stop = threading.Event()
        forwarder = asyncio.create_task(bridge.forward(report))
        fits: list[Fit] = []
        try:
            # each member: its own validation split and start, the same test questions
            for member, (train_i, valid_i) in enumerate(splits):
                eval_corpus, (valid_set, member_plain) = await loop.run_in_executor(
                    None,
                    eval_view,
                    corpus,
                    [queries(valid_i), valid_plain],
                    rng,
                    bounds.mining_pool,
                )
                data = TrainingData(
                    queries(train_i),
                    corpus,
                    eval_corpus,
                    valid_set,
                    (member_plain,),
                    bounds.mining_pool,
                )
                fits.append(
                    await loop.run_in_executor(
                        None,
                        fit,
                        data,
                        self.settings.epochs,
                        member_seed(seed, member),
                        stop,
                        functools.partial(bridge.post, member),
                    )
                )
        finally:
            # a timeout cancels this coroutine; the numpy thread stops at its next epoch
            stop.set()
            bridge.close()
            await forwarder
        fitted = Fit.mean(fits)
        # the reported figures: test questions and guards, which chose nothing
        test_q = queries(test_i)
        judged = await loop.run_in_executor(None, _Judged.of, test_q, test_plain, corpus)
        evaluations = await loop.run_in_executor(None, judged.evaluate, fitted.weights)
        metrics = fitted.as_json() | evaluations.as_json()
        if fitted.members:
            # each member on the same test questions and queries: how far they agreed
            for one, entry in zip(fitted.members, metrics["members"], strict=True):
                alone = await loop.run_in_executor(None, judged.evaluate, one.weights)
                entry.update(alone.changes_json())
        metrics.update(
            train_pairs=len(splits[0][0]),
            eval_queries=len(test_q),
            eval_chunks=len(np.unique(rows[test_i])),
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


def members_within(wanted: int, questions: int, holdout: float, bound: int) -> int:
    """How many member models a run trains, of `questions` to train and choose on (those
    not held out as test questions): as many as wanted while their training questions
    together stay within the bound one model's are held to, so a large run takes no longer
    than one model did (one member at the bound, three up to a third of it)."""
    per_member = max(1, questions - round(questions * holdout))
    return max(1, min(wanted, bound // per_member))


async def _plain(
    embedder: Embedder,
    texts: list[str],
    chunk_rows: Ranks,
    seed: int,
    exclude: set[str],
    cap: int,
) -> QuerySet:
    chunk_texts = [texts[int(r)] for r in chunk_rows]
    queries, positives = plain_queries(chunk_texts, chunk_rows, seed, exclude, cap)
    if not queries:
        return QuerySet(np.zeros((0, embedder.dimension), dtype=np.float32), positives)
    return QuerySet(await embedder.embed(queries), positives)


@attrs.frozen
class LocalQueryModel:
    """The adapter in front of the store's own nearest-chunk search."""

    adapter: Adapter
    store: ChunkStore

    async def search(self, query: Matrix, k: int, nearest: Nearest) -> list[SearchResult]:
        # the adapter transforms the query only: the store's own search serves it
        return await nearest(self.adapter.apply(query), k)
