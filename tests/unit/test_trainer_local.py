"""The local trainer on a small fixed corpus in a real deeplake dataset, and search with it."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import attrs
import numpy as np
import pytest

from deepmemory_service.api.search import NoModelError, search_chunks
from deepmemory_service.platform.config import load_settings
from deepmemory_service.storage.dataset import Rows
from deepmemory_service.storage.embedders import HashingEmbedder
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.training import ranking
from deepmemory_service.training.adapter import (
    Adapter,
    AdapterCache,
    Weights,
    model_path,
    save_adapter,
)
from deepmemory_service.training.fitting import SHAPES, Fit
from deepmemory_service.training.local import (
    Bounds,
    Evaluations,
    LocalTrainer,
    members_within,
    refusal,
)
from deepmemory_service.training.query_sets import held_out, member_splits
from deepmemory_service.training.ranking import Change, Evaluation, changes
from deepmemory_service.training.trainer import TrainingError, TrainingProgress, TrainingRequest

TOPICS = [
    "volcano", "glacier", "reef", "desert", "forest", "river", "cave", "prairie",
    "tundra", "marsh", "canyon", "island", "comet", "nebula", "quasar", "pulsar",
    "violin", "cello", "oboe", "banjo", "harp", "tuba", "lute", "sitar",
    "sourdough", "risotto", "paella", "ramen", "strudel", "falafel", "gnocchi", "tamale",
    "falcon", "otter", "badger", "heron", "lynx", "walrus", "gecko", "moose",
    "bridge", "tunnel", "aqueduct", "lighthouse", "windmill", "pagoda", "citadel", "dam",
    "chess", "rugby", "fencing", "curling", "polo", "archery", "rowing", "judo",
    "copper", "cobalt", "nickel", "zinc",
]  # fmt: skip
# every question carries these words, and so does one distractor chunk: before training it
# wins every search; the model has to learn that these words say nothing
NOISE = "zebra quokka axolotl narwhal okapi"


def corpus() -> list[str]:
    texts = [f"{NOISE}. A note that lists animals and nothing else."]
    for i, topic in enumerate(TOPICS):
        words = [f"{topic}{suffix}" for suffix in ("al", "ite", "ism", "ary")]
        texts.append(
            f"The {topic} chapter {i} covers {words[0]} and {words[1]}. "
            f"Experts on the {topic} also study {words[2]} with {words[3]}."
        )
    return texts


def training_pairs(texts: list[str]) -> tuple[list[str], list[int]]:
    questions, chunk_ids = [], []
    for chunk_id, text in enumerate(texts[1:], start=1):
        topic = text.split()[1]
        for suffix in ("al", "ite", "ism", "ary"):
            questions.append(f"{NOISE} {topic}{suffix}?")
            chunk_ids.append(chunk_id)
    return questions, chunk_ids


async def make_store(tmp_path: Path, embedder: HashingEmbedder) -> tuple[ChunkStore, list[str]]:
    texts = corpus()
    store = ChunkStore(str(tmp_path / "stores" / "user"), embedder.name, embedder.dimension)
    ids = list(range(len(texts)))
    await store.append(Rows(ids, texts, await embedder.embed(texts), [{} for _ in ids]))
    return store, texts


def settings(epochs: int = 40, bounds: Bounds | None = None, members: int = 3) -> LocalTrainer:
    train = attrs.evolve(load_settings({}).train, epochs=epochs, members=members)
    return LocalTrainer(train, bounds or Bounds())


async def test_training_helps_held_out_and_differently_phrased_queries(tmp_path: Path) -> None:
    embedder = HashingEmbedder(dimension=512)
    store, texts = await make_store(tmp_path, embedder)
    questions, chunk_ids = training_pairs(texts)
    reports: list[TrainingProgress] = []

    async def report(update: TrainingProgress) -> None:
        reports.append(update)

    # a fixed split: on so small a corpus one query more or less in the top 10 decides the
    # strict verdict, and the test is about what the model learns, not about the split
    run_id = uuid.UUID(int=2002)
    request = TrainingRequest(uuid.uuid4(), run_id, questions, chunk_ids, store, embedder)
    trainer = settings()
    outcome = await trainer.train(request, report)

    m = outcome.metrics
    assert outcome.can_enable, outcome.reason
    assert m["with_model"]["recall@10"] >= m["without_model"]["recall@10"]
    assert m["with_model"]["recall@1"] > m["without_model"]["recall@1"]
    assert m["eval_queries"] > 0
    # the epoch and the shape were chosen on validation questions, not on the reported ones
    assert m["validation_queries"] > 0
    assert {"rank", "l2", "shrink"} == set(m["chosen"])

    # progress: model shape, epoch, loss and validation recall, in order, as fractions
    assert reports
    steps = [r.details["step"] for r in reports]
    assert steps == sorted(steps)
    assert [r.fraction for r in reports] == sorted(r.fraction for r in reports)
    assert {"model", "epoch", "loss", "recall@10"} <= set(reports[-1].details)
    assert all(0 < r.fraction <= 1 for r in reports)
    # numbered across the run's three members, each trying every shape
    last = reports[-1].details["model"]
    assert last > len(SHAPES)
    assert reports[-1].message.startswith(f"Model {last}/{3 * len(SHAPES)}, epoch ")
    # the model is their average, each member chosen on its own validation questions
    assert len(m["members"]) == 3
    assert any(member["chosen"] is not None for member in m["members"])
    # and each member alone on the same test questions and queries like people's, so that
    # how far they agree shows beside the average's own changes
    for member in m["members"]:
        for key, queries in (("changes", m["eval_queries"]), ("plain_changes", m["plain_queries"])):
            assert set(member[key]) == set(m[key]) == {"recall@1", "recall@10"}
            assert all(c["won"] + c["lost"] <= queries for c in member[key].values())

    # the model lives beside the store, with what it was made from
    with np.load(model_path(store)) as saved:
        assert str(saved["embedder"]) == "hashing"
        assert int(saved["dimension"]) == 512
        assert str(saved["run_id"]) == str(run_id)
        assert json.loads(str(saved["metrics"]))["with_model"] == m["with_model"]
    assert await trainer.query_model(store) is not None

    # queries worded unlike any training question: reordered noise, other filler words
    noise = " ".join(reversed(NOISE.split()))
    right = {False: 0, True: 0}
    for chunk_id, text in enumerate(texts[1:], start=1):
        topic = text.split()[1]
        query = f"where can I read about {topic}ite, {noise}"
        for deep_memory in (False, True):
            (top,) = await search_chunks(
                store, embedder, query, 1, trainer=trainer if deep_memory else None
            )
            right[deep_memory] += top.chunk_id == chunk_id
            assert top.text == texts[top.chunk_id]
    assert right[False] <= len(TOPICS) // 4, right
    assert right[True] >= len(TOPICS) // 2, right


async def test_epochs_that_win_on_generated_questions_but_lose_plain_queries_are_not_kept(
    tmp_path: Path,
) -> None:
    """Each chunk names its topic's words, then its own code words. The questions pair a
    chunk's topic word with two code words of the next chunk: ignoring code words wins on
    held-out questions of that kind, while people who search for a chunk's codes would no
    longer find it. (The verdict's rule itself: `test_a_model_is_enabled_only_when…`.)"""
    topics = TOPICS[:40]
    texts = [
        f"{t}al {t}ite {t}ism {t}ary. Codes code{i}x code{i}y code{i}z apply here."
        for i, t in enumerate(topics)
    ]
    embedder = HashingEmbedder(dimension=4096)
    store = ChunkStore(str(tmp_path / "stores" / "user"), embedder.name, embedder.dimension)
    ids = list(range(len(texts)))
    await store.append(Rows(ids, texts, await embedder.embed(texts), [{} for _ in ids]))
    questions, chunk_ids = [], []
    for i, t in enumerate(topics):
        j = (i + 1) % len(topics)
        for suffix, codes in (("al", "xy"), ("ite", "yz"), ("ism", "xz"), ("ary", "xy")):
            questions.append(f"{t}{suffix} code{j}{codes[0]} code{j}{codes[1]}")
            chunk_ids.append(i)
    request = TrainingRequest(uuid.uuid4(), uuid.UUID(int=9), questions, chunk_ids, store, embedder)
    # the guard works within each member's fit: one member is enough, and a third of the
    # time at this dimension (a full map of 4,096)
    trainer = settings(members=1)
    outcome = await trainer.train(request, _noop)
    m = outcome.metrics
    # epochs that won on the questions by ignoring code words, and so lost people's code
    # searches, were never kept; the model kept loses none of the held-out plain queries
    assert m["guard_blocked_epochs"] > 0
    for k in ("recall@1", "recall@10"):
        assert m["plain_changes"][k]["lost"] <= m["plain_changes"][k]["won"], m
    assert m["with_model"]["recall@1"] > m["without_model"]["recall@1"]


async def test_search_without_a_model_is_refused(tmp_path: Path) -> None:
    embedder = HashingEmbedder(dimension=512)
    store, _ = await make_store(tmp_path, embedder)
    with pytest.raises(NoModelError, match="No trained Deep Memory model"):
        await search_chunks(store, embedder, "volcanoal", 3, trainer=settings())
    found = await search_chunks(store, embedder, "volcanoal", 3)
    assert found[0].text.startswith("The volcano chapter")


async def _noop(update: TrainingProgress) -> None:
    return None


async def test_too_few_pairs_or_unknown_chunks_are_training_errors(tmp_path: Path) -> None:
    embedder = HashingEmbedder(dimension=512)
    store, texts = await make_store(tmp_path, embedder)
    questions, chunk_ids = training_pairs(texts)

    few = TrainingRequest(uuid.uuid4(), uuid.uuid4(), questions[:5], chunk_ids[:5], store, embedder)
    with pytest.raises(TrainingError, match="too few pairs to train on: 5"):
        await settings().train(few, _noop)

    unknown = TrainingRequest(
        uuid.uuid4(), uuid.uuid4(), questions, [c + 10_000 for c in chunk_ids], store, embedder
    )
    with pytest.raises(TrainingError, match="refer to chunks in the vector store"):
        await settings().train(unknown, _noop)

    assert not model_path(store).exists()


async def test_one_question_per_chunk_trains_and_is_judged(tmp_path: Path) -> None:
    """The cheapest LLM setting: whole chunks' questions are held out, the model is
    trained on the rest and judged like any other."""
    embedder = HashingEmbedder(dimension=512)
    store, texts = await make_store(tmp_path, embedder)
    questions, chunk_ids = training_pairs(texts)
    single = TrainingRequest(
        uuid.uuid4(), uuid.UUID(int=5), questions[::4], chunk_ids[::4], store, embedder
    )
    outcome = await settings().train(single, _noop)
    m = outcome.metrics
    assert m["eval_queries"] == round(len(TOPICS) * 0.2)
    assert m["train_pairs"] + m["eval_queries"] + m["validation_queries"] == len(TOPICS)
    # what the model learnt (the noise words say nothing) carries over to other chunks
    assert m["with_model"]["recall@3"] > m["without_model"]["recall@3"], m
    assert outcome.can_enable, outcome.reason


async def test_a_store_made_by_another_embedder_is_a_training_error(tmp_path: Path) -> None:
    embedder = HashingEmbedder(dimension=512)
    store, texts = await make_store(tmp_path, embedder)
    questions, chunk_ids = training_pairs(texts)
    other = HashingEmbedder(dimension=256)
    wrong = TrainingRequest(uuid.uuid4(), uuid.uuid4(), questions, chunk_ids, store, other)
    with pytest.raises(TrainingError, match="dimension"):
        await settings().train(wrong, _noop)

    renamed = ChunkStore(store.path, "minilm", 512)
    with pytest.raises(TrainingError, match="holds hashing vectors of dimension 512"):
        await settings().train(
            TrainingRequest(uuid.uuid4(), uuid.uuid4(), questions, chunk_ids, renamed, embedder),
            _noop,
        )


def test_test_and_validation_questions_are_disjoint_and_every_chunk_keeps_one() -> None:
    rows = np.repeat(np.arange(40, dtype=np.int64), 3)
    test = held_out(rows, 0.2, seed=7)
    assert test.sum() == round(len(rows) * 0.2)
    rest = np.flatnonzero(~test)
    splits = member_splits(rows, rest, 0.2, seed=7, members=3)
    for train, valid in splits:
        # a member trains on the questions its validation split leaves, never on a test one
        assert sorted(np.concatenate([train, valid])) == list(rest)
        assert len(valid) == round(len(rest) * 0.2)
        # every chunk keeps a training question
        assert set(rows[train]) == set(rows)
    # the members choose on other validation questions
    assert len({tuple(valid) for _, valid in splits}) == 3
    # the reported test questions depend neither on the validation splits nor the members
    assert (held_out(rows, 0.2, seed=7) == test).all()
    assert [list(v) for _, v in member_splits(rows, rest, 0.2, 7, 1)] == [list(splits[0][1])]


def test_with_one_question_per_chunk_whole_chunks_are_held_out() -> None:
    rows = np.concatenate([np.arange(30), np.repeat(np.arange(30, 35), 2)]).astype(np.int64)
    test = held_out(rows, 0.2, seed=3)
    assert test.sum() == round(len(rows) * 0.2)
    # the chunks with two questions gave one each first
    assert set(rows[test]) >= set(range(30, 35))
    with pytest.raises(TrainingError, match="too few pairs to train and evaluate: 3 pairs"):
        held_out(np.arange(3, dtype=np.int64), 0.2, seed=3)


def _recalls(r1: float, r10: float) -> dict[str, float]:
    return {"recall@1": r1, "recall@3": r10, "recall@5": r10, "recall@10": r10}


def _evaluation(r1: float, r10: float, base1: float, base10: float, *lost_won: int) -> Evaluation:
    return Evaluation(
        100,
        _recalls(base1, base10),
        _recalls(r1, r10),
        (Change(1, *lost_won[:2]), Change(10, *lost_won[2:])) if lost_won else (),
    )


def test_a_model_is_enabled_only_when_it_wins_and_loses_nowhere() -> None:
    weights = Weights(
        np.zeros(4, np.float32), np.zeros((4, 1), np.float32), np.zeros((1, 4), np.float32)
    )
    fitted = Fit(weights, None, (), _recalls(0.5, 0.8), 10)
    wins = _evaluation(0.6, 0.9, 0.5, 0.8, 1, 11, 0, 10)
    even = _evaluation(0.7, 0.9, 0.7, 0.9, 3, 3, 2, 2)
    assert refusal(fitted, Evaluations(wins, even)) is None
    unfitted = attrs.evolve(fitted, weights=None)
    assert str(refusal(unfitted, Evaluations(wins, even))).startswith("No model was better")
    # winning on generated questions does not outweigh losing on queries like people's
    people_lose = _evaluation(0.39, 0.9, 0.41, 0.9, 5, 3, 0, 4)
    reason = refusal(fitted, Evaluations(wins, people_lose))
    assert reason == (
        "It lost more searches than it won at recall@1 on 100 held-out queries like "
        "people's (recall@1: 3 won, 5 lost; recall@10: 4 won, 0 lost): recall@1 0.41 → 0.39 "
        "and recall@10 0.90 → 0.90 with it."
    )
    generated_lose = _evaluation(0.45, 0.95, 0.5, 0.8, 6, 1, 3, 2)
    assert str(refusal(fitted, Evaluations(generated_lose, wins))).startswith(
        "It lost more searches than it won at recall@1 and @10 on 100 held-out generated "
        "questions (recall@1: 1 won, 6 lost; recall@10: 2 won, 3 lost)"
    )
    # as many won as lost everywhere, no recall higher: no better, so not enabled, and the
    # reason says so
    assert str(refusal(fitted, Evaluations(even, even))).startswith(
        "It was no better than search without it on 100 held-out queries like people's"
    )


def test_guard_changes_count_the_queries_each_k_lost_and_won() -> None:
    without = np.array([0, 0, 5, 12, 3, 20])
    with_model = np.array([0, 2, 0, 8, 15, 20])
    assert changes(without, with_model) == (Change(1, lost=1, won=1), Change(10, lost=1, won=1))


def test_ranks_in_blocks_equal_ranks_in_one_go(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    corpus = rng.standard_normal((50, 16)).astype(np.float32)
    queries = rng.standard_normal((23, 16)).astype(np.float32)
    positives = rng.integers(0, 50, 23)
    scores = queries @ corpus.T
    expected = (scores > scores[np.arange(23), positives][:, None]).sum(axis=1)
    monkeypatch.setattr(ranking, "SCORE_FLOATS", 50 * 4)  # blocks of 4 queries
    assert ranking.ranks_of(queries, positives, corpus).tolist() == expected.tolist()


async def test_a_run_larger_than_the_bounds_trains_on_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bounds that keep a large run's memory and time flat, made small: training,
    validation and test questions are samples, negatives come from a sample of the
    corpus, and scores are taken a few queries at a time. The model still learns."""
    monkeypatch.setattr(ranking, "SCORE_FLOATS", 61 * 5)
    embedder = HashingEmbedder(dimension=512)
    store, texts = await make_store(tmp_path, embedder)
    questions, chunk_ids = training_pairs(texts)

    async def report(update: TrainingProgress) -> None:
        return None

    # a fixed run id, so a fixed split; the sampled validation corpus keeps each query's
    # nearest chunks (here the one distractor every query starts out preferring): without
    # them, 4 of 12 seeds chose an adapter that never learned to pass it
    run_id = uuid.UUID(int=2)
    request = TrainingRequest(uuid.uuid4(), run_id, questions, chunk_ids, store, embedder)
    bounds = Bounds(train_queries=120, eval_queries=24, mining_pool=30)
    outcome = await settings(bounds=bounds).train(request, report)

    m = outcome.metrics
    assert m["eval_queries"] == 24
    assert m["validation_queries"] == 24
    assert m["train_pairs"] == 120
    assert m["with_model"]["recall@1"] > m["without_model"]["recall@1"]


async def test_the_model_cache_is_bounded_and_follows_the_file(tmp_path: Path) -> None:
    def adapter(scale: float, run_id: str) -> Adapter:
        w = np.full(4, scale, np.float32)
        return Adapter(
            Weights(w, np.zeros((4, 1), np.float32), np.zeros((1, 4), np.float32)),
            "hashing",
            run_id,
        )

    stores = [ChunkStore(str(tmp_path / f"user{i}"), "hashing", 4) for i in range(3)]
    for i, store in enumerate(stores):
        save_adapter(model_path(store), adapter(float(i), f"run{i}"), {})
    cache = AdapterCache(size=2)
    loaded = [await cache.load(store) for store in stores]
    assert [a.run_id for a in loaded if a is not None] == ["run0", "run1", "run2"]
    assert len(cache) == 2  # the least recently used one was dropped
    # a new model for a store replaces the cached one (the file's mtime changed)
    path = model_path(stores[2])
    save_adapter(path, adapter(5.0, "run9"), {})
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 1))
    again = await cache.load(stores[2])
    assert again is not None
    assert again.run_id == "run9"
    # a model made by another embedder or for another dimension is not used
    assert await cache.load(ChunkStore(stores[0].path, "minilm", 4)) is None
    assert await cache.load(ChunkStore(stores[0].path, "hashing", 8)) is None
    path.unlink()
    assert await cache.load(stores[2]) is None


def test_the_trainer_sets_numpys_blas_threads() -> None:
    from threadpoolctl import threadpool_info

    from deepmemory_service.training.blas import blas_threads, cores

    assert blas_threads(3) == 3
    assert blas_threads(0) == (1 if cores() <= 2 else cores() // 2)
    try:
        for wanted in (2, 1):
            trainer = LocalTrainer(attrs.evolve(load_settings({}).train, blas_threads=wanted))
            assert trainer.blas_threads == wanted
            blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
            assert blas, "numpy links a BLAS"
            assert {p["num_threads"] for p in blas} == {wanted}
    finally:
        settings()  # back to the default for the rest of the session


def test_a_runs_model_is_the_average_of_its_members_transforms() -> None:
    rng = np.random.default_rng(5)
    dim = 16

    def member(rank: int | None) -> Weights:
        a = np.eye(dim) if rank is None else rng.standard_normal((dim, rank))
        b = rng.standard_normal((a.shape[1], dim)) * 0.1
        w = rng.standard_normal(dim) * 0.1
        return Weights(w.astype(np.float32), a.astype(np.float32), b.astype(np.float32))

    def unnormalised(weights: Weights, q: np.ndarray) -> np.ndarray:
        return q + q * weights.w + (q @ weights.a) @ weights.b

    queries = rng.standard_normal((7, dim)).astype(np.float32)
    # low-rank maps side by side; with a full map among them, one full map; a member that
    # found no model abstains
    for found in ([member(4), member(0)], [member(8), member(None), member(2)]):
        mean = Weights.mean([*found, None])
        assert mean is not None
        expected = np.mean([unnormalised(m, queries) for m in found], axis=0)
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(mean.apply(queries), expected, rtol=1e-4, atol=1e-5)
    single = Weights.mean([member(None)])
    assert single is not None
    assert single.a.shape == (dim, dim)
    assert Weights.mean([None, None]) is None


def test_a_large_run_trains_fewer_members_within_one_models_bound() -> None:
    # members' training questions together stay within the bound (1,000 here); a member
    # trains on what its validation split leaves of the questions (80 %)
    assert [members_within(3, n, 0.2, 1000) for n in (100, 416, 417, 625, 626, 5000)] == [
        3,
        3,
        2,
        2,
        1,
        1,
    ]
    assert members_within(1, 100, 0.2, 1000) == 1
