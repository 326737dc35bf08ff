"""The query sets a local training is built from and judged on: held-out splits of the
run's questions, samples that bound a large run, and queries cut from the chunks' own text
(phrases, headings) that look nothing like the generated questions."""

from __future__ import annotations

import re

import attrs
import numpy as np
import numpy.typing as npt

from deepmemory_service.embedders import Matrix
from deepmemory_service.ranking import Ranks, nearest_rows
from deepmemory_service.trainers import TrainingError

Mask = npt.NDArray[np.bool_]

MINING_POOL = 10_000
EVAL_NEAREST = 5


@attrs.frozen
class QuerySet:
    """Query vectors and the corpus row each one should find."""

    q: Matrix
    pos: Ranks

    def __len__(self) -> int:
        return len(self.q)


def _split(rows: Ranks, holdout: float, seed: int) -> Mask:
    """Held-out questions, chosen by a seed: never trained on. A chunk keeps at least one
    question for training, since the model's use is new queries for the same corpus."""
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
    if held.sum() < 2 or (~held).sum() < 2:
        raise TrainingError(
            f"too few pairs to train and evaluate: {len(rows)} pairs over "
            f"{len(np.unique(rows))} chunks (chunks need two questions or more)"
        )
    return held


def split_three(rows: Ranks, holdout: float, seed: int) -> tuple[Mask, Mask]:
    """(test, validation) masks. The test questions are held out first, by the run's seed,
    and only measure the chosen model; validation questions, held out of the rest by another
    seed, choose the epoch and the model shape. Neither is trained on."""
    test = _split(rows, holdout, seed)
    rest = np.flatnonzero(~test)
    valid = np.zeros(len(rows), dtype=bool)
    valid[rest[_split(rows[rest], holdout, seed + 1)]] = True
    return test, valid


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


def probe_phrases(texts: list[str], seed: int, words: int = 8) -> list[str]:
    """One run of `words` words from each text, at a seeded place."""
    rng = np.random.default_rng(seed)
    phrases = []
    for text in texts:
        tokens = text.split()
        start = int(rng.integers(0, max(1, len(tokens) - words + 1)))
        phrases.append(" ".join(tokens[start : start + words]))
    return phrases


_UNDERLINE = re.compile(r"^\s*([*=~^\-])\1{2,}(\s|$)")
_MARKDOWN = re.compile(r"^\s{0,3}#{1,6}\s+(\S.*?)\s*#*\s*$")


def headings(text: str) -> list[str]:
    """Section titles in a chunk: markdown `#` lines, or lines underlined with `***`,
    `===`, `---`, `~~~` or `^^^` (reStructuredText, pydoc). Short ones only."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = _MARKDOWN.match(line)
        if match:
            found.append(match.group(1))
        elif (
            i + 1 < len(lines)
            and line.strip()
            and not _UNDERLINE.match(line)
            and _UNDERLINE.match(lines[i + 1])
        ):
            found.append(line.strip())
    return [h for h in found if 1 <= len(h.split()) <= 12]


def heading_queries(texts: list[str], rows: Ranks) -> tuple[list[str], list[int]]:
    """Human-like short queries: each chunk's first heading, bare and as a question. A
    chunk without a heading gives none."""
    queries: list[str] = []
    positives: list[int] = []
    for text, row in zip(texts, rows, strict=True):
        found = headings(text)
        if found:
            queries += [found[0], f"What is {found[0]}?"]
            positives += [int(row), int(row)]
    return queries, positives
