"""The local trainer: Deep Memory's idea on this machine, in numpy.

It learns a residual transform of query embeddings, `q' = normalise(q + q*w + q A B)`: a
per-dimension re-weighting `w` (for a hashing embedder, learned term weights) plus a map
`A B`, of low rank or full (`A` fixed at the identity). Both start at zero, so the
untrained model is exactly the identity, and an L2 pull keeps it near there (measured
lesson: a free full map over-fits synthetic questions and makes human queries worse). The
loss is InfoNCE over a candidate pool of the batch's positives plus hard negatives mined
from the corpus itself.

The pairs are split three ways by the run's seed, each chunk keeping a question for
training: test questions are held out first and only measure the chosen model (the
reported figures); validation questions, held out of the rest, pick the epoch (early
stopping), the shrink toward the identity and the model's shape (the rank of `A B`, the
L2 pull and the learning rate, from `SHAPES`), by mean recall plus mean reciprocal rank.
Because synthetic held-out recall can rise while plain queries get worse (measured
lesson), guards use the chunks' own text: phrases cut from the training chunks are trained
on as anchors; phrases from, and headings of, the held-out chunks are query sets that no
kept epoch may lose more queries than it wins on, at recall@1 or recall@10, and the enable
check repeats that with other phrases of the test chunks. A model that evaluates worse
than no model on any of them is reported, with the reason, and may not be enabled.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from deepmemory_service.config import TrainSettings
from deepmemory_service.embedders import Matrix, normalise
from deepmemory_service.store import ChunkStore, StoreError
from deepmemory_service.trainers import (
    Reporter,
    TrainingError,
    TrainingOutcome,
    TrainingProgress,
    TrainingRequest,
)

KS = (1, 3, 5, 10)
# guard sets may lose no more queries than they win at these k. Measured on the pydoc
# benchmark: a rule that tolerates noise (a one-sided sign test) let models through that
# dropped topic-title queries' recall@1 by up to 14 points; the strict rule refused them
GUARD_KS = (1, 10)
RANK = 32
TEMPERATURE = 0.05
L2 = 1e-3
LEARNING_RATE = 5e-3
BATCH = 64
HARD_NEGATIVES = 20
PATIENCE = 10
MIN_PAIRS = 10
# a large run stays in bounded memory and time: scores are computed a block of queries at a
# time; question sets (and the chunks guards are made of) are seeded samples where they are
# larger than these; hard negatives are mined from, and epochs are chosen against, a
# sample of a larger corpus (the reported test figures rank against all of it)
SCORE_FLOATS = 1 << 24  # 64 MB of float32 scores at a time
MAX_TRAIN_QUERIES = 10_000
MAX_EVAL_QUERIES = 1_000
MINING_POOL = 10_000
EVAL_NEAREST = 5
# each epoch's adapter is also tried shrunk toward the identity: q + alpha * (q*w + q A B)
SHRINK = (1.0, 0.5)


def model_path(store: ChunkStore) -> Path:
    """The adapter lives beside the user's dataset folder."""
    if store.is_cloud:
        raise TrainingError("the local trainer needs a local vector store, not a hub:// one")
    return Path(f"{store.path}.deepmemory.npz")


@attrs.frozen
class Adapter:
    w: npt.NDArray[np.float32]
    a: npt.NDArray[np.float32]
    b: npt.NDArray[np.float32]
    embedder: str
    run_id: str

    def apply(self, queries: Matrix) -> Matrix:
        return _transform(queries, self.w, self.a, self.b)


_CACHE: dict[str, tuple[float, Adapter]] = {}


def load_adapter(store: ChunkStore) -> Adapter | None:
    """The user's trained adapter, or None; cached until the file changes."""
    path = model_path(store)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    cached = _CACHE.get(str(path))
    if cached is not None and cached[0] == mtime:
        return cached[1]
    with np.load(path) as data:
        adapter = Adapter(
            data["w"], data["a"], data["b"], str(data["embedder"]), str(data["run_id"])
        )
    if adapter.embedder != store.embedder or adapter.a.shape[0] != store.dimension:
        return None
    _CACHE[str(path)] = (mtime, adapter)
    return adapter


def _save(path: Path, adapter: Adapter, metrics: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        w=adapter.w,
        a=adapter.a,
        b=adapter.b,
        embedder=adapter.embedder,
        dimension=adapter.w.shape[0],
        run_id=adapter.run_id,
        metrics=json.dumps(metrics),
    )
    os.replace(tmp, path)  # readers see the old model or the new one, never half of one


def _transform(
    q: Matrix, w: npt.NDArray[np.float32], a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]
) -> Matrix:
    return normalise((q + q * w + (q @ a) @ b).astype(np.float32))


def _mean(recalls: dict[str, float]) -> float:
    return sum(recalls.values()) / len(recalls)


def changes(without: npt.NDArray[np.int64], with_model: npt.NDArray[np.int64]) -> dict[str, Any]:
    """Per guarded k, the queries the model lost (found without it, missed with it) and won."""
    return {
        f"recall@{k}": {
            "lost": int(((without < k) & (with_model >= k)).sum()),
            "won": int(((without >= k) & (with_model < k)).sum()),
        }
        for k in GUARD_KS
    }


def _hurts(changed: dict[str, Any]) -> bool:
    """More queries lost than won at some guarded k."""
    return any(c["lost"] > c["won"] for c in changed.values())


def probe_phrases(texts: list[str], seed: int, words: int = 8) -> list[str]:
    """One run of `words` words from each text, at a seeded place."""
    rng = np.random.default_rng(seed)
    phrases = []
    for text in texts:
        tokens = text.split()
        start = int(rng.integers(0, max(1, len(tokens) - words + 1)))
        phrases.append(" ".join(tokens[start : start + words]))
    return phrases


def _blocks(queries: int, corpus: int) -> range:
    """Starts of query blocks whose scores against the corpus fit in SCORE_FLOATS."""
    return range(0, queries, max(1, SCORE_FLOATS // max(1, corpus)))


def ranks_of(
    queries: Matrix, positives: npt.NDArray[np.int64], corpus: Matrix
) -> npt.NDArray[np.int64]:
    """Each query's rank of its chunk: how many chunks score strictly higher."""
    ranks = np.empty(len(queries), dtype=np.int64)
    step = _blocks(len(queries), len(corpus)).step
    for start in _blocks(len(queries), len(corpus)):
        block = slice(start, start + step)
        scores = queries[block] @ corpus.T
        positive_scores = scores[np.arange(len(scores)), positives[block]]
        ranks[block] = (scores > positive_scores[:, None]).sum(axis=1)
    return ranks


def _hard_negatives(
    queries: Matrix, corpus: Matrix, k: int, rng: np.random.Generator, pool_size: int
) -> npt.NDArray[np.int64]:
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


def _eval_view(
    corpus: Matrix, sets: list[_Queries], rng: np.random.Generator
) -> tuple[Matrix, list[_Queries]]:
    """The corpus the query sets are ranked against while choosing epochs: all of it, or for
    a large one a sample of MINING_POOL rows, every set's own chunks, and the chunks each
    query ranks highest without a model (the competitors that decide its rank: an adapter
    stays near the identity), renumbered."""
    if len(corpus) <= MINING_POOL:
        return corpus, sets
    sample = rng.choice(len(corpus), MINING_POOL, replace=False)
    queries = np.concatenate([s.q for s in sets])
    nearest = _hard_negatives(queries, corpus, EVAL_NEAREST, rng, len(corpus))
    keep = np.union1d(np.union1d(sample, nearest.ravel()), np.concatenate([s.pos for s in sets]))
    return corpus[keep], [_Queries(s.q, np.searchsorted(keep, s.pos)) for s in sets]


def _at_most(
    indexes: npt.NDArray[np.int64], cap: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """`indexes`, or a sample of `cap` of them in their order."""
    if len(indexes) <= cap:
        return indexes
    return np.sort(rng.choice(indexes, cap, replace=False))


def recall_at(
    queries: Matrix, positives: npt.NDArray[np.int64], corpus: Matrix
) -> dict[str, float]:
    """recall@k for each k in KS: the share of queries whose chunk ranks in the top k."""
    return _recalls(ranks_of(queries, positives, corpus))


def _recalls(ranks: npt.NDArray[np.int64]) -> dict[str, float]:
    return {f"recall@{k}": float((ranks < k).mean()) for k in KS}


def _score(ranks: npt.NDArray[np.int64]) -> tuple[float, float]:
    """What validation maximises: mean recall over KS plus mean reciprocal rank (which
    weighs the top ranks and breaks the ties small validation sets make common), then MRR."""
    recall = float(np.mean([(ranks < k).mean() for k in KS]))
    mrr = float((1.0 / (ranks + 1)).mean())
    return recall + mrr, mrr


@attrs.define
class _Adam:
    params: list[npt.NDArray[np.float32]]
    lr: float
    m: list[npt.NDArray[np.float32]] = attrs.field(init=False)
    v: list[npt.NDArray[np.float32]] = attrs.field(init=False)
    t: int = 0

    def __attrs_post_init__(self) -> None:
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]

    def step(self, grads: list[npt.NDArray[np.float32]]) -> None:
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            m_hat = m / (1 - 0.9**self.t)
            v_hat = v / (1 - 0.999**self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


@attrs.frozen
class _Queries:
    """Query vectors and the corpus row each one should find."""

    q: Matrix
    pos: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.q)


@attrs.frozen
class _Data:
    train_q: Matrix
    train_pos: npt.NDArray[np.int64]
    corpus: Matrix
    # what validation and guards rank against: the corpus, or a sample of a large one
    eval_corpus: Matrix
    # validation: picks the epoch and the model shape; never reported as the result
    valid: _Queries
    # guards for choosing epochs, from all held-out chunks' own text: phrases and headings
    valid_guards: tuple[_Queries, ...]


def _split(rows: npt.NDArray[np.int64], holdout: float, seed: int) -> npt.NDArray[np.bool_]:
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


def split_three(
    rows: npt.NDArray[np.int64], holdout: float, seed: int
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(test, validation) masks. The test questions are held out first, by the run's seed,
    and only measure the chosen model; validation questions, held out of the rest by another
    seed, choose the epoch and the model shape. Neither is trained on."""
    test = _split(rows, holdout, seed)
    rest = np.flatnonzero(~test)
    valid = np.zeros(len(rows), dtype=bool)
    valid[rest[_split(rows[rest], holdout, seed + 1)]] = True
    return test, valid


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


def heading_queries(texts: list[str], rows: npt.NDArray[np.int64]) -> tuple[list[str], list[int]]:
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


def _guards_hold(
    guards: tuple[_Queries, ...],
    base: list[npt.NDArray[np.int64]],
    params: tuple[npt.NDArray[np.float32], ...],
    corpus: Matrix,
) -> bool:
    for guard, without in zip(guards, base, strict=True):
        if len(guard) and _hurts(
            changes(without, ranks_of(_transform(guard.q, *params), guard.pos, corpus))
        ):
            return False
    return True


def _train(
    data: _Data,
    shape: Shape,
    settings: TrainSettings,
    seed: int,
    stop: threading.Event,
    progress: Any,
) -> tuple[tuple[npt.NDArray[np.float32], ...] | None, tuple[float, float], dict[str, Any]]:
    """Train one shape; the best epoch (and shrink) by validation score among those that
    hurt no guard, or None when none beats no model."""
    dim = data.corpus.shape[1]
    rng = np.random.default_rng(seed)
    # a full map: `a` stays the identity and `b` learns the map
    full = shape.rank is None
    a: npt.NDArray[np.float32] = (
        np.eye(dim, dtype=np.float32)
        if full
        else (rng.standard_normal((dim, shape.rank or 0)) / np.sqrt(dim)).astype(np.float32)
    )
    b: npt.NDArray[np.float32] = np.zeros((a.shape[1], dim), dtype=np.float32)
    w: npt.NDArray[np.float32] = np.zeros(dim, dtype=np.float32)
    l2 = shape.l2
    adam = _Adam([w, b] if full else [w, a, b], shape.lr)
    valid = data.valid
    baseline = recall_at(valid.q, valid.pos, data.eval_corpus)
    guard_base = [ranks_of(g.q, g.pos, data.eval_corpus) for g in data.valid_guards]
    base_score = best_score = _score(ranks_of(valid.q, valid.pos, data.eval_corpus))
    best: tuple[npt.NDArray[np.float32], ...] | None = None
    best_epoch, stale, history, blocked = 0, 0, [], 0
    best_alpha = 1.0
    n = len(data.train_q)
    for epoch in range(1, settings.epochs + 1):
        if stop.is_set():
            break
        current = _transform(data.train_q, w, a, b)
        # hard negatives: the corpus chunks the current model ranks highest, right or wrong
        hard = _hard_negatives(current, data.corpus, HARD_NEGATIVES, rng, MINING_POOL)
        order = rng.permutation(n)
        losses = []
        for start in range(0, n, BATCH):
            idx = order[start : start + BATCH]
            q = data.train_q[idx]
            pool = np.unique(np.concatenate([data.train_pos[idx], hard[idx].ravel()]))
            cands = data.corpus[pool]
            target = np.searchsorted(pool, data.train_pos[idx])
            u = q + q * w + (q @ a) @ b
            norm = np.linalg.norm(u, axis=1, keepdims=True) + 1e-9
            qn = u / norm
            logits = (qn @ cands.T) / TEMPERATURE
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            rows = np.arange(len(idx))
            losses.append(float(-np.log(probs[rows, target] + 1e-12).mean()))
            d_logits = probs
            d_logits[rows, target] -= 1.0
            d_logits /= len(idx) * TEMPERATURE
            d_qn = d_logits @ cands
            d_u = (d_qn - qn * (qn * d_qn).sum(axis=1, keepdims=True)) / norm
            d_w = (d_u * q).sum(axis=0) + l2 * w
            d_b = (q @ a).T @ d_u + l2 * b
            grads = [d_w, d_b] if full else [d_w, q.T @ (d_u @ b.T) + l2 * a, d_b]
            adam.step([g.astype(np.float32) for g in grads])
        loss = float(np.mean(losses))
        improved = False
        for alpha in SHRINK:
            params = (w * alpha, a.copy(), b * alpha)
            moved = _transform(valid.q, *params)
            ranks = ranks_of(moved, valid.pos, data.eval_corpus)
            evaluated, score = _recalls(ranks), _score(ranks)
            # measured lesson: synthetic held-out recall can rise while plain queries get
            # worse, so an epoch that hurts a guard set is never kept as the best
            held = _guards_hold(data.valid_guards, guard_base, params, data.eval_corpus)
            if alpha == 1.0:
                history.append(
                    {"epoch": epoch, "loss": round(loss, 4), **evaluated, "guards_held": held}
                )
                progress(epoch, loss, evaluated)
            if held and score > best_score:
                best_score, best, best_epoch, improved = score, params, epoch, True
                best_alpha = alpha
            blocked += not held and score > base_score
        if improved:
            stale = 0
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    report: dict[str, Any] = {
        "rank": shape.rank,
        "l2": shape.l2,
        "best_epoch": best_epoch,
        "shrink": best_alpha,
        "epochs_run": len(history),
        "guard_blocked": blocked,
        "validation_without_model": baseline,
        "validation_with_model": (
            baseline
            if best is None
            else recall_at(_transform(valid.q, *best), valid.pos, data.eval_corpus)
        ),
        "history": history[-10:],
    }
    return best, best_score, report


def _fit(
    data: _Data, settings: TrainSettings, seed: int, stop: threading.Event, progress: Any
) -> tuple[Adapter | None, dict[str, Any]]:
    """Each shape in turn; the validation score picks the one to keep."""
    best: tuple[npt.NDArray[np.float32], ...] | None = None
    best_score = (-1.0, -1.0)
    tried: list[dict[str, Any]] = []
    chosen: dict[str, Any] | None = None
    for i, shape in enumerate(SHAPES):
        if stop.is_set():
            break

        def step(epoch: int, loss: float, evaluated: dict[str, float], i: int = i) -> None:
            progress(i, epoch, loss, evaluated)

        params, score, report = _train(data, shape, settings, seed, stop, step)
        tried.append(report)
        if params is not None and score > best_score:
            best, best_score, chosen = params, score, report
    metrics: dict[str, Any] = {
        "shapes_tried": [
            {
                key: r[key]
                for key in (
                    "rank",
                    "l2",
                    "best_epoch",
                    "shrink",
                    "epochs_run",
                    "validation_with_model",
                )
            }
            for r in tried
        ],
        "validation_without_model": recall_at(data.valid.q, data.valid.pos, data.eval_corpus),
        "validation_queries": len(data.valid),
        # epochs that did better on validation questions but worse on a guard set
        "guard_blocked_epochs": sum(r["guard_blocked"] for r in tried),
    }
    if best is None or chosen is None:
        last = tried[-1] if tried else {"best_epoch": 0, "epochs_run": 0, "history": []}
        metrics.update(
            best_epoch=0,
            epochs_run=sum(r["epochs_run"] for r in tried),
            history=last["history"],
            validation_with_model=metrics["validation_without_model"],
        )
        return None, metrics
    metrics.update(
        chosen={"rank": chosen["rank"], "l2": chosen["l2"], "shrink": chosen["shrink"]},
        best_epoch=chosen["best_epoch"],
        epochs_run=sum(r["epochs_run"] for r in tried),
        history=chosen["history"],
        validation_with_model=chosen["validation_with_model"],
    )
    return Adapter(best[0], best[1], best[2], "", ""), metrics


def _evaluate(adapter: Adapter | None, sets: dict[str, _Queries], corpus: Matrix) -> dict[str, Any]:
    """recall@k without and with the model on each query set, keyed by its prefix, and on
    the guard sets the queries lost and won."""
    metrics: dict[str, Any] = {}
    for prefix, queries in sets.items():
        if not len(queries):
            continue
        without = ranks_of(queries.q, queries.pos, corpus)
        with_model = (
            without if adapter is None else ranks_of(adapter.apply(queries.q), queries.pos, corpus)
        )
        metrics[f"{prefix}without_model"] = _recalls(without)
        metrics[f"{prefix}with_model"] = _recalls(with_model)
        if prefix:
            metrics[f"{prefix}changes"] = changes(without, with_model)
    return metrics


class LocalTrainer:
    name = "local"

    def __init__(self, settings: TrainSettings) -> None:
        self.settings = settings

    async def train(self, request: TrainingRequest, report: Reporter) -> TrainingOutcome:
        store = request.store
        path = model_path(store)
        if len(request.questions) < MIN_PAIRS:
            raise TrainingError(
                f"too few pairs to train on: {len(request.questions)} (at least {MIN_PAIRS})"
            )
        if request.embedder.name != store.embedder:
            raise TrainingError(
                f"the vector store holds {store.embedder} vectors but the configured embedder "
                f"is {request.embedder.name}: re-ingest or configure the same embedder"
            )
        try:
            ids, corpus = await store.matrix()
        except StoreError as exc:
            raise TrainingError(str(exc)) from None
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
        train_i = _at_most(np.flatnonzero(~(test | valid)), MAX_TRAIN_QUERIES, rng)
        valid_i = _at_most(np.flatnonzero(valid), MAX_EVAL_QUERIES, rng)
        test_i = _at_most(np.flatnonzero(test), MAX_EVAL_QUERIES, rng)
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
        texts = await store.texts()
        if len(texts) != len(ids):
            raise TrainingError(f"the vector store holds {len(ids)} vectors but {len(texts)} texts")

        async def guards(
            chunk_rows: npt.NDArray[np.int64], phrase_seed: int
        ) -> tuple[_Queries, ...]:
            """Queries unlike the generated questions, from these chunks' own text:
            phrases cut from them, and their headings (when they have any)."""
            chunk_texts = [texts[int(r)] for r in chunk_rows]
            phrases = await request.embedder.embed(probe_phrases(chunk_texts, phrase_seed))
            titles, title_rows = heading_queries(chunk_texts, chunk_rows)
            titled = (
                await request.embedder.embed(titles)
                if titles
                else np.zeros((0, corpus.shape[1]), dtype=np.float32)
            )
            return (
                _Queries(phrases, chunk_rows),
                _Queries(titled, np.array(title_rows, dtype=np.int64)),
            )

        test_rows, valid_rows = np.unique(rows[test_i]), np.unique(rows[valid_i])
        test_guards = await guards(_at_most(test_rows, MAX_EVAL_QUERIES, rng), seed)
        # epochs are kept only if they hurt no guard of any held-out chunk; the final check
        # repeats it with other phrases of the test chunks
        valid_guards = await guards(
            _at_most(np.union1d(valid_rows, test_rows), MAX_EVAL_QUERIES, rng), seed + 2
        )
        # anchors: phrases from the training questions' chunks, trained on alongside them,
        # so the adapter learns what the questions share without unlearning plain queries
        train_rows = rows[train_i]
        anchor_rows = _at_most(np.unique(train_rows), MAX_TRAIN_QUERIES // 4, rng)
        anchor_q = await request.embedder.embed(
            probe_phrases([texts[int(r)] for r in anchor_rows], seed + 1)
        )
        eval_corpus, (valid_set, *valid_guard_sets) = await loop.run_in_executor(
            None, _eval_view, corpus, [_Queries(valid_q, rows[valid_i]), *valid_guards], rng
        )
        data = _Data(
            np.concatenate([train_q, anchor_q]),
            np.concatenate([train_rows, anchor_rows]),
            corpus,
            eval_corpus,
            valid_set,
            tuple(valid_guard_sets),
        )

        reports: asyncio.Queue[TrainingProgress | None] = asyncio.Queue()
        stop = threading.Event()
        epochs = self.settings.epochs
        last = [0.0]

        def progress(model: int, epoch: int, loss: float, evaluated: dict[str, float]) -> None:
            now = time.monotonic()
            if now - last[0] < 0.2 and epoch < epochs:
                return
            last[0] = now
            # each shape may stop early: the bar moves on to the next shape's share
            step = model * epochs + epoch
            update = TrainingProgress(
                f"Model {model + 1}/{len(SHAPES)}, epoch {epoch}/{epochs}: loss {loss:.3f}, "
                f"validation recall@10 {evaluated['recall@10']:.2f}",
                step / (len(SHAPES) * epochs),
                {"model": model + 1, "epoch": epoch, "step": step, "loss": round(loss, 4)}
                | evaluated,
            )
            loop.call_soon_threadsafe(reports.put_nowait, update)

        async def forward() -> None:
            while (update := await reports.get()) is not None:
                await report(update)

        forwarder = asyncio.create_task(forward())
        try:
            adapter, metrics = await loop.run_in_executor(
                None, _fit, data, self.settings, seed, stop, progress
            )
        finally:
            # a timeout cancels this coroutine; the numpy thread stops at its next epoch
            stop.set()
            reports.put_nowait(None)
            await forwarder
        # the reported figures: test questions and guards, which chose nothing
        sets = {
            "": _Queries(test_q, rows[test_i]),
            "probe_": test_guards[0],
            "headings_": test_guards[1],
        }
        metrics |= await loop.run_in_executor(None, _evaluate, adapter, sets, corpus)
        metrics.update(
            train_pairs=len(data.train_q),
            eval_queries=len(test_q),
            eval_chunks=len(test_rows),
            probe_queries=len(test_guards[0]),
            heading_queries=len(test_guards[1]),
            corpus_chunks=len(ids),
            embedder=store.embedder,
        )
        reason = self._refusal(adapter, metrics)
        if adapter is None or reason is not None:
            return TrainingOutcome(metrics, False, reason)
        await loop.run_in_executor(
            None,
            _save,
            path,
            attrs.evolve(adapter, embedder=store.embedder, run_id=str(request.run_id)),
            metrics,
        )
        return TrainingOutcome(metrics, True, None)

    @staticmethod
    def _refusal(adapter: Adapter | None, metrics: dict[str, Any]) -> str | None:
        """Why this model may not be enabled, or None. Never enable a model that evaluates
        worse than no model: on the held-out test questions (recall@1, or no better on
        average), or at recall@1 or recall@10 on the phrases or the headings of the
        held-out chunks (more of them lost than won)."""
        with_m, without = metrics["with_model"], metrics["without_model"]
        if (
            adapter is None
            or with_m["recall@1"] < without["recall@1"]
            or _mean(with_m) <= _mean(without)
        ):
            blocked = (
                " (every epoch that did better on validation questions did worse on phrases "
                "from, or headings of, the held-out chunks)"
                if adapter is None and metrics.get("guard_blocked_epochs")
                else ""
            )
            return (
                f"the trained model scored recall@1 {with_m['recall@1']:.2f} and recall@10 "
                f"{with_m['recall@10']:.2f} on held-out questions, against "
                f"{without['recall@1']:.2f} and {without['recall@10']:.2f} without it{blocked}"
            )
        for prefix, what in (
            ("probe_", "phrases from the held-out chunks"),
            ("headings_", "the held-out chunks' headings"),
        ):
            changed = metrics.get(f"{prefix}changes")
            if changed is None or not _hurts(changed):
                continue
            guard_with, guard_without = (
                metrics[f"{prefix}with_model"],
                metrics[f"{prefix}without_model"],
            )
            counts = ", ".join(f"{k}: {c['lost']} lost, {c['won']} won" for k, c in changed.items())
            return (
                f"the trained model scored recall@1 {guard_with['recall@1']:.2f} and "
                f"recall@10 {guard_with['recall@10']:.2f} on {what}, against "
                f"{guard_without['recall@1']:.2f} and {guard_without['recall@10']:.2f} "
                f"without it ({counts})"
            )
        return None

    async def aclose(self) -> None:
        return None
