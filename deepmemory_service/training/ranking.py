"""Ranks and what is reported from them: recall@k, queries won and lost, nearest rows.

Scores against a large corpus are taken a block of queries at a time, so memory stays
bounded (SCORE_FLOATS) whatever the corpus size.
"""

from __future__ import annotations

import attrs
import numpy as np
import numpy.typing as npt

from deepmemory_service.vectors import Matrix

Ranks = npt.NDArray[np.int64]
# {"recall@1": 0.5, ...}: the shape the API, the page and the benchmarks read
Recalls = dict[str, float]

KS = (1, 3, 5, 10)
# a model may lose no more queries than it wins at these k. Measured on the pydoc
# benchmark: a rule that tolerates noise (a one-sided sign test) let models through that
# dropped topic-title queries' recall@1 by up to 14 points; the strict rule refused them
GUARD_KS = (1, 10)
SCORE_FLOATS = 1 << 24  # 64 MB of float32 scores at a time


def _blocks(queries: int, corpus: int) -> range:
    """Starts of query blocks whose scores against the corpus fit in SCORE_FLOATS."""
    return range(0, queries, max(1, SCORE_FLOATS // max(1, corpus)))


def ranks_of(queries: Matrix, positives: Ranks, corpus: Matrix) -> Ranks:
    """Each query's rank of its chunk: how many chunks score strictly higher."""
    ranks = np.empty(len(queries), dtype=np.int64)
    step = _blocks(len(queries), len(corpus)).step
    for start in _blocks(len(queries), len(corpus)):
        block = slice(start, start + step)
        scores = queries[block] @ corpus.T
        positive_scores = scores[np.arange(len(scores)), positives[block]]
        ranks[block] = (scores > positive_scores[:, None]).sum(axis=1)
    return ranks


def nearest_rows(
    queries: Matrix, corpus: Matrix, k: int, rng: np.random.Generator, pool_size: int
) -> Ranks:
    """For each query, `k` of the corpus rows it scores highest, right or wrong; among a
    fresh sample of `pool_size` rows when the corpus is larger."""
    pool = (
        np.arange(len(corpus))
        if len(corpus) <= pool_size
        else np.sort(rng.choice(len(corpus), pool_size, replace=False))
    )
    candidates = corpus[pool]
    k = min(k, len(pool) - 1)
    hard = np.empty((len(queries), k), dtype=np.int64)
    step = _blocks(len(queries), len(pool)).step
    for start in _blocks(len(queries), len(pool)):
        block = slice(start, start + step)
        scores = queries[block] @ candidates.T
        hard[block] = pool[np.argpartition(-scores, k, axis=1)[:, :k]]
    return hard


def recalls(ranks: Ranks) -> Recalls:
    """recall@k for each k in KS: the share of queries whose chunk ranks in the top k."""
    return {f"recall@{k}": float((ranks < k).mean()) for k in KS}


def recall_at(queries: Matrix, positives: Ranks, corpus: Matrix) -> Recalls:
    return recalls(ranks_of(queries, positives, corpus))


def mean_recall(values: Recalls) -> float:
    return sum(values.values()) / len(values)


def score(ranks: Ranks) -> tuple[float, float]:
    """What validation maximises: mean recall over KS plus mean reciprocal rank (which
    weighs the top ranks and breaks the ties small validation sets make common), then MRR."""
    recall = float(np.mean([(ranks < k).mean() for k in KS]))
    mrr = float((1.0 / (ranks + 1)).mean())
    return recall + mrr, mrr


@attrs.frozen
class Change:
    """At recall@k, the queries a model lost (found without it, missed with it) and won."""

    k: int
    lost: int
    won: int


def changes(without: Ranks, with_model: Ranks) -> tuple[Change, ...]:
    """Per guarded k, the queries the model lost and won."""
    return tuple(
        Change(
            k,
            int(((without < k) & (with_model >= k)).sum()),
            int(((without >= k) & (with_model < k)).sum()),
        )
        for k in GUARD_KS
    )


def hurts(changed: tuple[Change, ...]) -> bool:
    """More queries lost than won at some guarded k."""
    return any(c.lost > c.won for c in changed)


@attrs.frozen
class Evaluation:
    """One query set ranked without and with a model."""

    queries: int
    without: Recalls
    with_model: Recalls
    changes: tuple[Change, ...]

    @classmethod
    def of(cls, without: Ranks, with_model: Ranks) -> Evaluation:
        return cls(
            len(without), recalls(without), recalls(with_model), changes(without, with_model)
        )

    @property
    def hurts(self) -> bool:
        return hurts(self.changes)

    def changes_json(self) -> dict[str, dict[str, int]]:
        return {f"recall@{c.k}": {"lost": c.lost, "won": c.won} for c in self.changes}
