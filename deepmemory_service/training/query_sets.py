"""The query sets a local training is built from and judged on: held-out splits of the
run's questions (test questions, and each member model's validation questions), samples
that bound a large run, and queries cut from the chunks' own text (sentences and key terms
as people search) that are none of the questions trained on."""

from __future__ import annotations

import random

import attrs
import numpy as np
import numpy.typing as npt

from deepmemory_service.text.queries import held_out_queries
from deepmemory_service.training.ranking import Ranks, nearest_rows
from deepmemory_service.training.trainer import TrainingError
from deepmemory_service.vectors import Matrix

Mask = npt.NDArray[np.bool_]

MINING_POOL = 10_000
EVAL_NEAREST = 5
# how far apart the seeds of a run's members are
MEMBER_STRIDE = 1000


@attrs.frozen
class QuerySet:
    """Query vectors and the corpus row each one should find."""

    q: Matrix
    pos: Ranks

    def __len__(self) -> int:
        return len(self.q)


def held_out(rows: Ranks, holdout: float, seed: int) -> Mask:
    """Held-out questions, chosen by a seed: never trained on. They are taken first from
    chunks that keep another question for training (the model's use is new queries about
    the same corpus), then, with one question per chunk, whole chunks are held out."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(rows), dtype=bool)
    order = rng.permutation(len(rows))
    target = max(2, round(len(rows) * holdout))
    kept: dict[int, int] = {}
    for i in order:
        kept[int(rows[i])] = kept.get(int(rows[i]), 0) + 1
    for i in order:
        if held.sum() >= target:
            break
        if kept[int(rows[i])] > 1:
            held[i] = True
            kept[int(rows[i])] -= 1
    for i in order:
        if held.sum() >= target:
            break
        held[i] = True  # with one question per chunk, the chunk's only one
    if held.sum() < 2 or (~held).sum() < 2:
        raise TrainingError(
            f"too few pairs to train and evaluate: {len(rows)} pairs (a model is trained on "
            "some and judged on others)"
        )
    return held


def member_seed(seed: int, member: int) -> int:
    """The seed of one member of a run's models (member 0: the run's own)."""
    return seed + MEMBER_STRIDE * member


def member_splits(
    rows: Ranks, rest: Ranks, holdout: float, seed: int, members: int
) -> list[tuple[Ranks, Ranks]]:
    """Each member's (training, validation) question indexes, all of them from `rest` (the
    run's questions that are not test questions): every member holds out other validation
    questions, by its own seed, to choose its epoch and shape, and trains on the rest."""
    splits = []
    for member in range(members):
        valid = held_out(rows[rest], holdout, member_seed(seed, member) + 1)
        splits.append((rest[~valid], rest[valid]))
    return splits


def at_most(indexes: Ranks, cap: int, rng: np.random.Generator) -> Ranks:
    """`indexes`, or a sample of `cap` of them in their order."""
    if len(indexes) <= cap:
        return indexes
    return np.sort(rng.choice(indexes, cap, replace=False))


def eval_view(
    corpus: Matrix, sets: list[QuerySet], rng: np.random.Generator, pool: int = MINING_POOL
) -> tuple[Matrix, list[QuerySet]]:
    """The corpus the query sets are ranked against while choosing epochs: all of it, or for
    a large one a sample of `pool` rows, every set's own chunks, and the chunks each
    query ranks highest without a model (the competitors that decide its rank: an adapter
    stays near the identity), renumbered."""
    if len(corpus) <= pool:
        return corpus, sets
    sample = rng.choice(len(corpus), pool, replace=False)
    queries = np.concatenate([s.q for s in sets])
    nearest = nearest_rows(queries, corpus, EVAL_NEAREST, rng, len(corpus))
    keep = np.union1d(np.union1d(sample, nearest.ravel()), np.concatenate([s.pos for s in sets]))
    return corpus[keep], [QuerySet(s.q, np.searchsorted(keep, s.pos)) for s in sets]


def plain_queries(
    texts: list[str], rows: Ranks, seed: int, exclude: set[str], cap: int
) -> tuple[list[str], Ranks]:
    """Queries like people's about these chunks, none of them a question trained on: their
    sentences and key terms (`held_out_queries`), a seeded sample of `cap` when there are
    more, with the row each should find."""
    rng = random.Random(seed)  # noqa: S311  (a reproducible sample, not a secret)
    queries: list[str] = []
    positives: list[int] = []
    for text, row in zip(texts, rows, strict=True):
        found = held_out_queries(text, rng, exclude)
        queries += found
        positives += [int(row)] * len(found)
    if len(queries) > cap:
        keep = sorted(rng.sample(range(len(queries)), cap))
        queries = [queries[i] for i in keep]
        positives = [positives[i] for i in keep]
    return queries, np.array(positives, dtype=np.int64)
