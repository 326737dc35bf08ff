"""Fitting the adapter: each model shape trained in turn with early stopping, guarded
epochs, and the validation score choosing the shape to keep.

Because held-out generated questions can improve while people's searches get worse
(measured lesson), an epoch is kept only if it loses no more queries than it wins, at
recall@1 and @10, on the validation questions and on the guard sets (queries like people's,
cut from the chunks' own text), and epochs are ranked by their score on all of them; each
epoch's weights are also tried shrunk toward the identity.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np

from deepmemory_service.training.adapter import Weights
from deepmemory_service.training.optimiser import Adam, infonce
from deepmemory_service.training.query_sets import QuerySet
from deepmemory_service.training.ranking import (
    Ranks,
    Recalls,
    changes,
    hurts,
    nearest_rows,
    ranks_of,
    recall_at,
    recalls,
    score,
)
from deepmemory_service.vectors import Matrix

RANK = 32
L2 = 1e-3
LEARNING_RATE = 5e-3
BATCH = 64
HARD_NEGATIVES = 20
PATIENCE = 10
# each epoch's adapter is also tried shrunk toward the identity: q + alpha * (q*w + q A B)
SHRINK = (1.0, 0.5, 0.25)


@attrs.frozen
class Shape:
    """One adapter shape to try: the rank of `A B`, its L2 pull to the identity, and the
    learning rate."""

    rank: int | None  # None: a full map of the dimension
    l2: float
    lr: float = LEARNING_RATE


# on the pydoc benchmark's validation questions, the per-dimension weights alone did best
# for the hashing embedder (a wider map over-fits hashed words) and a full map, learning
# slower and pulled harder toward the identity, for MiniLM; each run's validation split
# picks among them
SHAPES = (Shape(0, L2), Shape(8, 1e-2), Shape(RANK, L2), Shape(None, 1e-2, 1e-3))


@attrs.frozen
class TrainingData:
    train: QuerySet
    corpus: Matrix
    # what validation and guards rank against: the corpus, or a sample of a large one
    eval_corpus: Matrix
    # validation: picks the epoch and the model shape; never reported as the result
    valid: QuerySet
    # guards for choosing epochs, from all held-out chunks' own text: phrases and headings
    valid_guards: tuple[QuerySet, ...]
    # hard negatives are mined among a sample of this many rows of a larger corpus
    mining_pool: int


@attrs.frozen
class EpochReport:
    epoch: int
    loss: float
    validation: Recalls
    guards_held: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss": round(self.loss, 4),
            **self.validation,
            "guards_held": self.guards_held,
        }


@attrs.frozen
class ShapeReport:
    """How one shape trained: its best epoch and shrink, by validation score."""

    shape: Shape
    best_epoch: int
    shrink: float
    epochs_run: int
    # epochs that did better on validation questions but worse on a guard set
    guard_blocked: int
    validation_with_model: Recalls
    history: tuple[EpochReport, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "rank": self.shape.rank,
            "l2": self.shape.l2,
            "best_epoch": self.best_epoch,
            "shrink": self.shrink,
            "epochs_run": self.epochs_run,
            "validation_with_model": self.validation_with_model,
        }


@attrs.frozen
class Fit:
    """The chosen weights (None: no shape beat no model) and how every shape did."""

    weights: Weights | None
    chosen: ShapeReport | None
    tried: tuple[ShapeReport, ...]
    validation_without_model: Recalls
    validation_queries: int
    # the members averaged into this one (none: a single fit)
    members: tuple[Fit, ...] = ()

    @classmethod
    def mean(cls, members: Sequence[Fit]) -> Fit:
        """The members' fits as one model: their weights averaged (`Weights.mean`: a member
        that found no model abstains), the first chosen shape and its
        validation figures reported, every member's shapes tried, and each member's
        choice in `members`."""
        if len(members) == 1:
            return members[0]
        reported = next((m for m in members if m.chosen is not None), members[0])
        return cls(
            Weights.mean([m.weights for m in members]),
            reported.chosen,
            tuple(r for m in members for r in m.tried),
            reported.validation_without_model,
            reported.validation_queries,
            tuple(members),
        )

    def as_json(self) -> dict[str, Any]:
        chosen = self.chosen
        last = chosen or (self.tried[-1] if self.tried else None)
        metrics: dict[str, Any] = {
            "shapes_tried": [r.as_json() for r in self.tried],
            "validation_without_model": self.validation_without_model,
            "validation_queries": self.validation_queries,
            "guard_blocked_epochs": sum(r.guard_blocked for r in self.tried),
            "best_epoch": chosen.best_epoch if chosen else 0,
            "epochs_run": sum(r.epochs_run for r in self.tried),
            "history": [e.as_json() for e in last.history] if last else [],
            "validation_with_model": (
                chosen.validation_with_model if chosen else self.validation_without_model
            ),
        }
        if chosen is not None:
            metrics["chosen"] = {
                "rank": chosen.shape.rank,
                "l2": chosen.shape.l2,
                "shrink": chosen.shrink,
            }
        if self.members:
            metrics["members"] = [_member_json(m.as_json()) for m in self.members]
        return metrics


def _member_json(metrics: dict[str, Any]) -> dict[str, Any]:
    """What a member chose, out of its own metrics."""
    return {"chosen": metrics.get("chosen")} | {
        key: metrics[key]
        for key in ("best_epoch", "validation_without_model", "validation_with_model")
    }


# (shape index, epoch, loss, validation recalls), called from the fitting thread
Progress = Callable[[int, int, float, Recalls], None]


def _ranks(data: TrainingData, weights: Weights) -> list[Ranks]:
    """Each choosing set's ranks with `weights`: the validation questions, then the guards."""
    return [
        ranks_of(weights.apply(queries.q), queries.pos, data.eval_corpus)
        for queries in (data.valid, *data.valid_guards)
    ]


def _judged(base: list[Ranks], ranks: list[Ranks]) -> tuple[bool, tuple[float, float]]:
    """A candidate on what chooses, from its ranks and those without a model (`base`),
    validation questions first: whether it loses no more queries than it wins at a guarded
    k on every set, and its score summed over them (what picks the epoch, shrink and shape,
    so the gain must hold on queries like people's)."""
    held = True
    total = [0.0, 0.0]
    for without, with_model in zip(base, ranks, strict=True):
        if not len(without):
            continue
        held = held and not hurts(changes(without, with_model))
        total = [a + b for a, b in zip(total, score(with_model), strict=True)]
    return held, (total[0], total[1])


def _initial(shape: Shape, dim: int, rng: np.random.Generator) -> Weights:
    """Weights of the identity transform; a full map keeps `a` the identity and learns `b`."""
    a = (
        np.eye(dim, dtype=np.float32)
        if shape.rank is None
        else (rng.standard_normal((dim, shape.rank)) / np.sqrt(dim)).astype(np.float32)
    )
    return Weights(
        np.zeros(dim, dtype=np.float32), a, np.zeros((a.shape[1], dim), dtype=np.float32)
    )


def fit_shape(
    data: TrainingData,
    shape: Shape,
    epochs: int,
    seed: int,
    stop: threading.Event,
    progress: Callable[[int, float, Recalls], None],
) -> tuple[Weights | None, tuple[float, float], ShapeReport]:
    """Train one shape; the best epoch (and shrink) by validation score among those that
    hurt no guard, or None when none beats no model."""
    rng = np.random.default_rng(seed)
    weights = _initial(shape, data.corpus.shape[1], rng)
    learn_a = shape.rank is not None
    # the arrays are updated in place, so `weights` is always the current model
    adam = Adam([weights.w, weights.a, weights.b] if learn_a else [weights.w, weights.b], shape.lr)
    valid, train = data.valid, data.train
    base = [ranks_of(g.q, g.pos, data.eval_corpus) for g in (valid, *data.valid_guards)]
    base_valid = score(base[0])
    _, base_score = _judged(base, base)
    best_valid = base[0]
    best_score = base_score
    best: Weights | None = None
    best_epoch, best_alpha, stale, blocked = 0, 1.0, 0, 0
    history: list[EpochReport] = []
    for epoch in range(1, epochs + 1):
        if stop.is_set():
            break
        # hard negatives: the corpus chunks the current model ranks highest, right or wrong
        hard = nearest_rows(
            weights.apply(train.q), data.corpus, HARD_NEGATIVES, rng, data.mining_pool
        )
        order = rng.permutation(len(train))
        losses = []
        for start in range(0, len(train), BATCH):
            idx = order[start : start + BATCH]
            pool = np.unique(np.concatenate([train.pos[idx], hard[idx].ravel()]))
            target = np.searchsorted(pool, train.pos[idx])
            grads = infonce(
                weights, train.q[idx], data.corpus[pool], target, shape.l2, learn_a=learn_a
            )
            losses.append(grads.loss)
            adam.step([grads.w, grads.a, grads.b] if grads.a is not None else [grads.w, grads.b])
        loss = float(np.mean(losses))
        improved = False
        for alpha in SHRINK:
            candidate = weights.shrunk(alpha)
            ranks = _ranks(data, candidate)
            held, candidate_score = _judged(base, ranks)
            if alpha == 1.0:
                evaluated = recalls(ranks[0])
                history.append(EpochReport(epoch, loss, evaluated, held))
                progress(epoch, loss, evaluated)
            # measured lesson: held-out generated questions can improve while people's
            # queries get worse, so an epoch that hurts a guard set is never kept
            if held and candidate_score > best_score:
                best_score, best, best_epoch, improved = candidate_score, candidate, epoch, True
                best_alpha, best_valid = alpha, ranks[0]
            blocked += not held and score(ranks[0]) > base_valid
        if improved:
            stale = 0
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    report = ShapeReport(
        shape,
        best_epoch,
        best_alpha,
        len(history),
        blocked,
        recalls(best_valid),
        tuple(history[-10:]),
    )
    return best, best_score, report


def fit(
    data: TrainingData, epochs: int, seed: int, stop: threading.Event, progress: Progress
) -> Fit:
    """Each shape in turn; the validation score picks the one to keep."""
    best: Weights | None = None
    best_score = (-1.0, -1.0)
    chosen: ShapeReport | None = None
    tried: list[ShapeReport] = []
    for i, shape in enumerate(SHAPES):
        if stop.is_set():
            break

        def step(epoch: int, loss: float, evaluated: Recalls, i: int = i) -> None:
            progress(i, epoch, loss, evaluated)

        weights, shape_score, report = fit_shape(data, shape, epochs, seed, stop, step)
        tried.append(report)
        if weights is not None and shape_score > best_score:
            best, best_score, chosen = weights, shape_score, report
    return Fit(
        best,
        chosen,
        tuple(tried),
        recall_at(data.valid.q, data.valid.pos, data.eval_corpus),
        len(data.valid),
    )
