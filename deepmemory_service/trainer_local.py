"""The local trainer: Deep Memory's idea on this machine, in numpy.

It learns a residual transform of query embeddings, `q' = normalise(q + q*w + q A B)`: a
per-dimension re-weighting `w` (for a hashing embedder, learned term weights) plus a
low-rank map `A B`. Both start at zero, so the untrained model is exactly the identity,
and an L2 pull keeps it near there (measured lesson: a free full-rank map over-fits
synthetic questions and makes human queries worse). The loss is InfoNCE over a candidate
pool of the batch's positives plus hard negatives mined from the corpus itself. Held-out
questions (each chunk keeps others for training) measure it, early stopping keeps the best
epoch. Because synthetic held-out recall can rise while plain queries get worse (measured
lesson), two guards use the chunks' own text: phrases cut from the training chunks are
trained on as anchors, and phrases from the held-out chunks are a second evaluation set
that no kept epoch, and no enabled model, may score worse on. A model that evaluates worse
than no model is reported and may not be enabled.
"""

from __future__ import annotations

import asyncio
import json
import os
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
RANK = 32
TEMPERATURE = 0.05
L2 = 1e-3
LEARNING_RATE = 5e-3
BATCH = 64
HARD_NEGATIVES = 20
PATIENCE = 10
MIN_PAIRS = 10


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


def _hurts(with_model: dict[str, float], without: dict[str, float]) -> bool:
    return (
        with_model["recall@1"] < without["recall@1"]
        or with_model["recall@10"] < without["recall@10"]
    )


def probe_phrases(texts: list[str], seed: int, words: int = 8) -> list[str]:
    """One run of `words` words from each text, at a seeded place."""
    rng = np.random.default_rng(seed)
    phrases = []
    for text in texts:
        tokens = text.split()
        start = int(rng.integers(0, max(1, len(tokens) - words + 1)))
        phrases.append(" ".join(tokens[start : start + words]))
    return phrases


def recall_at(
    queries: Matrix, positives: npt.NDArray[np.int64], corpus: Matrix
) -> dict[str, float]:
    """recall@k for each k in KS: the share of queries whose chunk ranks in the top k."""
    scores = queries @ corpus.T
    positive_scores = scores[np.arange(len(queries)), positives]
    # rank = how many chunks score strictly higher than the right one
    ranks = (scores > positive_scores[:, None]).sum(axis=1)
    return {f"recall@{k}": float((ranks < k).mean()) for k in KS}


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
class _Data:
    train_q: Matrix
    train_pos: npt.NDArray[np.int64]
    eval_q: Matrix
    eval_pos: npt.NDArray[np.int64]
    corpus: Matrix
    # phrases cut from the held-out chunks' own text: queries unlike the generated ones
    probe_q: Matrix
    probe_pos: npt.NDArray[np.int64]


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


def _train(
    data: _Data, settings: TrainSettings, seed: int, stop: threading.Event, progress: Any
) -> tuple[Adapter | None, dict[str, Any]]:
    dim = data.corpus.shape[1]
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((dim, RANK)) / np.sqrt(dim)).astype(np.float32)
    b = np.zeros((RANK, dim), dtype=np.float32)
    w = np.zeros(dim, dtype=np.float32)
    adam = _Adam([w, a, b], LEARNING_RATE)
    baseline = recall_at(data.eval_q, data.eval_pos, data.corpus)
    probe_base = recall_at(data.probe_q, data.probe_pos, data.corpus)
    best_score = _mean(baseline)
    best: tuple[npt.NDArray[np.float32], ...] | None = None
    best_epoch, stale, history = 0, 0, []
    n = len(data.train_q)
    for epoch in range(1, settings.epochs + 1):
        if stop.is_set():
            break
        current = _transform(data.train_q, w, a, b)
        # hard negatives: the corpus chunks the current model ranks highest, right or wrong
        hard = np.argpartition(-(current @ data.corpus.T), HARD_NEGATIVES, axis=1)[
            :, :HARD_NEGATIVES
        ]
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
            d_w = (d_u * q).sum(axis=0) + L2 * w
            d_a = q.T @ (d_u @ b.T) + L2 * a
            d_b = (q @ a).T @ d_u + L2 * b
            adam.step([g.astype(np.float32) for g in (d_w, d_a, d_b)])
        evaluated = recall_at(_transform(data.eval_q, w, a, b), data.eval_pos, data.corpus)
        score = _mean(evaluated)
        probe = recall_at(_transform(data.probe_q, w, a, b), data.probe_pos, data.corpus)
        # measured lesson: synthetic held-out recall can rise while plain queries get
        # worse, so an epoch that hurts the probe phrases is never kept as the best
        if _hurts(probe, probe_base):
            score = -1.0
        loss = float(np.mean(losses))
        history.append({"epoch": epoch, "loss": round(loss, 4), **evaluated})
        progress(epoch, loss, evaluated)
        if score > best_score + 1e-9:
            best_score, best, best_epoch, stale = score, (w.copy(), a.copy(), b.copy()), epoch, 0
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    metrics: dict[str, Any] = {
        "without_model": baseline,
        "probe_without_model": probe_base,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "history": history[-10:],
    }
    if best is None:
        metrics["with_model"] = baseline
        return None, metrics
    metrics["with_model"] = recall_at(_transform(data.eval_q, *best), data.eval_pos, data.corpus)
    metrics["probe_with_model"] = recall_at(
        _transform(data.probe_q, *best), data.probe_pos, data.corpus
    )
    return Adapter(best[0], best[1], best[2], "", ""), metrics


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
        questions = await request.embedder.embed([request.questions[i] for i in keep])
        if questions.shape[1] != corpus.shape[1]:
            raise TrainingError(
                f"query vectors have dimension {questions.shape[1]} but the store holds "
                f"{corpus.shape[1]}: the embedder changed since ingestion"
            )
        seed = uuid.UUID(str(request.run_id)).int % 2**32
        held = _split(rows, self.settings.holdout, seed)
        n_eval = len(np.unique(rows[held]))
        loop = asyncio.get_running_loop()
        eval_rows = np.unique(rows[held])
        texts = await store.texts()
        if len(texts) != len(ids):
            raise TrainingError(f"the vector store holds {len(ids)} vectors but {len(texts)} texts")
        probe_q = await request.embedder.embed(
            probe_phrases([texts[int(r)] for r in eval_rows], seed)
        )
        # anchors: phrases from the training questions' chunks, trained on alongside them,
        # so the adapter learns what the questions share without unlearning plain queries
        train_rows = rows[~held]
        anchor_rows = np.unique(train_rows)
        anchor_q = await request.embedder.embed(
            probe_phrases([texts[int(r)] for r in anchor_rows], seed + 1)
        )
        data = _Data(
            np.concatenate([questions[~held], anchor_q]),
            np.concatenate([train_rows, anchor_rows]),
            questions[held],
            rows[held],
            corpus,
            probe_q,
            eval_rows,
        )

        reports: asyncio.Queue[TrainingProgress | None] = asyncio.Queue()
        stop = threading.Event()
        epochs = self.settings.epochs
        last = [0.0]

        def progress(epoch: int, loss: float, evaluated: dict[str, float]) -> None:
            now = time.monotonic()
            if now - last[0] < 0.2 and epoch < epochs:
                return
            last[0] = now
            update = TrainingProgress(
                f"Epoch {epoch}/{epochs}: loss {loss:.3f}, held-out recall@10 "
                f"{evaluated['recall@10']:.2f}",
                epoch / epochs,
                {"epoch": epoch, "loss": round(loss, 4), **evaluated},
            )
            loop.call_soon_threadsafe(reports.put_nowait, update)

        async def forward() -> None:
            while (update := await reports.get()) is not None:
                await report(update)

        forwarder = asyncio.create_task(forward())
        try:
            adapter, metrics = await loop.run_in_executor(
                None, _train, data, self.settings, seed, stop, progress
            )
        finally:
            # a timeout cancels this coroutine; the numpy thread stops at its next epoch
            stop.set()
            reports.put_nowait(None)
            await forwarder
        metrics.update(
            train_pairs=len(data.train_q),
            eval_queries=len(data.eval_q),
            eval_chunks=n_eval,
            corpus_chunks=len(ids),
            embedder=store.embedder,
        )
        with_m, without = metrics["with_model"], metrics["without_model"]
        probe_with = metrics.get("probe_with_model", metrics["probe_without_model"])
        probe_without = metrics["probe_without_model"]
        # never enable a model that evaluates worse than no model, on either query set
        if (
            adapter is None
            or with_m["recall@1"] < without["recall@1"]
            or _mean(with_m) <= _mean(without)
        ):
            reason = (
                f"the trained model scored recall@1 {with_m['recall@1']:.2f} and recall@10 "
                f"{with_m['recall@10']:.2f} on held-out questions, against "
                f"{without['recall@1']:.2f} and {without['recall@10']:.2f} without it"
            )
            return TrainingOutcome(metrics, False, reason)
        if _hurts(probe_with, probe_without):
            reason = (
                f"the trained model scored recall@1 {probe_with['recall@1']:.2f} and "
                f"recall@10 {probe_with['recall@10']:.2f} on phrases from the held-out "
                f"chunks, against {probe_without['recall@1']:.2f} and "
                f"{probe_without['recall@10']:.2f} without it"
            )
            return TrainingOutcome(metrics, False, reason)
        await loop.run_in_executor(
            None,
            _save,
            path,
            attrs.evolve(adapter, embedder=store.embedder, run_id=str(request.run_id)),
            metrics,
        )
        return TrainingOutcome(metrics, True, None)

    async def aclose(self) -> None:
        return None
