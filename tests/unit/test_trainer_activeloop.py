"""The Activeloop trainer end to end against a local stand-in of Activeloop's REST API.

Nothing is replaced inside deeplake: its real `VectorStore(hub://…)`, `deep_memory.train`
(which writes the queries dataset) and client calls run. The stand-in answers the storage
credentials request with a local folder, so the hub:// datasets live under `tmp_path`.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
from aiohttp.test_utils import TestServer

from deepmemory_service.platform.config import load_settings
from deepmemory_service.storage.dataset import Rows
from deepmemory_service.storage.embedders import HashingEmbedder
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.testing.standin_activeloop import ActiveloopStandin, make_app
from deepmemory_service.training.activeloop import (
    ActiveloopTrainer,
    recall_from_progress,
    use_endpoint,
)
from deepmemory_service.training.trainer import TrainingError, TrainingProgress, TrainingRequest

TOKEN = "al-test-token-never-logged"
CORPUS = [f"passage {i} about topic {i} with words w{i} x{i}" for i in range(12)]


@pytest.fixture
def standin_state(tmp_path: Path) -> ActiveloopStandin:
    return ActiveloopStandin(root=tmp_path / "hub", token=TOKEN, polls_to_finish=3)


@pytest.fixture
async def standin(standin_state: ActiveloopStandin) -> AsyncIterator[TestServer]:
    server = TestServer(make_app(standin_state), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture(autouse=True)
def restore_endpoint() -> Iterator[None]:
    yield
    use_endpoint(None)


async def corpus_request(state: ActiveloopStandin, n_pairs: int = 12) -> TrainingRequest:
    embedder = HashingEmbedder(dimension=64)
    # the corpus the stand-in's credentials point hub://standin-org/corpus at
    local = ChunkStore(str(state.local_path("standin-org", "corpus")), "hashing", 64)
    ids = list(range(100, 100 + len(CORPUS)))
    await local.append(Rows(ids, CORPUS, await embedder.embed(CORPUS), [{} for _ in ids]))
    store = ChunkStore("hub://standin-org/corpus", "hashing", 64, TOKEN)
    questions = [f"what about topic {i % len(CORPUS)}?" for i in range(n_pairs)]
    chunk_ids = [ids[i % len(CORPUS)] for i in range(n_pairs)]
    return TrainingRequest(uuid.uuid4(), uuid.uuid4(), questions, chunk_ids, store, embedder)


def trainer(url: str | None, timeout_s: float = 20.0) -> ActiveloopTrainer:
    settings = attrs.evolve(load_settings({}).train, timeout_s=timeout_s, poll_s=0.05)
    return ActiveloopTrainer(settings, TOKEN, endpoint=url)


async def test_a_job_trains_to_completed_with_the_pairs_submitted(
    standin: TestServer, standin_state: ActiveloopStandin
) -> None:
    request = await corpus_request(standin_state)
    reports: list[TrainingProgress] = []

    async def report(update: TrainingProgress) -> None:
        reports.append(update)

    started = time.monotonic()
    outcome = await trainer(str(standin.make_url(""))).train(request, report)
    assert time.monotonic() - started < 30

    (job,) = standin_state.jobs.values()
    assert job.submitted_queries == list(request.questions)
    assert job.submitted_relevance == [[(str(c), 1)] for c in request.chunk_ids]
    assert job.corpus == "hub://standin-org/corpus"
    assert job.polls == 3
    assert outcome.can_enable
    assert outcome.metrics["job_id"] == job.id
    assert outcome.metrics["with_model"] == {"recall@10": 0.86}
    assert outcome.metrics["without_model"] == {"recall@10": 0.71}
    assert [r.details.get("status") for r in reports if "status" in r.details] == [
        "training",
        "training",
    ]
    assert all(0 <= r.fraction <= 1 for r in reports)
    # the token travels only as the Authorization header the stand-in checked
    assert "GET /api/user/profile" in standin_state.calls


async def test_a_failed_job_is_a_training_error_with_its_reason(
    standin: TestServer, standin_state: ActiveloopStandin
) -> None:
    standin_state.outcome = "failed"
    request = await corpus_request(standin_state)

    async def report(update: TrainingProgress) -> None:
        return None

    with pytest.raises(TrainingError, match=r"job \w+ failed: Training crashed: out of memory"):
        await trainer(str(standin.make_url(""))).train(request, report)


async def test_a_model_without_gain_may_not_be_enabled(
    standin: TestServer, standin_state: ActiveloopStandin
) -> None:
    standin_state.recall_with = standin_state.recall_without = 0.5
    request = await corpus_request(standin_state)

    async def report(update: TrainingProgress) -> None:
        return None

    outcome = await trainer(str(standin.make_url(""))).train(request, report)
    assert not outcome.can_enable
    assert outcome.reason == "the trained model scored recall@10 0.50 vs 0.50 without it"


def _deeplake_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("deeplake:")]


async def test_an_unreachable_service_fails_promptly_and_the_thread_ends(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    state = ActiveloopStandin(root=tmp_path / "hub", token=TOKEN)
    request = await corpus_request(state)

    async def report(update: TrainingProgress) -> None:
        return None

    started = time.monotonic()
    with pytest.raises(TrainingError, match="Activeloop training service unreachable"):
        # nothing listens there: deeplake's own client would retry forever
        await trainer(f"http://127.0.0.1:{unused_tcp_port}", timeout_s=60).train(request, report)
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while _deeplake_threads() and time.monotonic() < deadline:
        await _pause()
    assert not _deeplake_threads()


async def test_a_stalled_service_is_cut_off_at_the_timeout(
    standin: TestServer, standin_state: ActiveloopStandin
) -> None:
    standin_state.hang_status = True
    request = await corpus_request(standin_state)

    async def report(update: TrainingProgress) -> None:
        return None

    started = time.monotonic()
    with pytest.raises(TrainingError, match="checking the job's status did not finish within 3s"):
        await trainer(str(standin.make_url("")), timeout_s=3).train(request, report)
    assert time.monotonic() - started < 6


async def test_a_wrong_token_is_reported_as_such(
    standin: TestServer, standin_state: ActiveloopStandin
) -> None:
    standin_state.token = "another-token"
    request = await corpus_request(standin_state)

    async def report(update: TrainingProgress) -> None:
        return None

    with pytest.raises(TrainingError, match="rejected the token") as caught:
        await trainer(str(standin.make_url(""))).train(request, report)
    assert TOKEN not in str(caught.value)


async def test_a_local_store_is_refused(tmp_path: Path) -> None:
    embedder = HashingEmbedder(dimension=64)

    async def report(update: TrainingProgress) -> None:
        return None

    local = ChunkStore(str(tmp_path / "s"), "hashing", 64)
    with pytest.raises(TrainingError, match="needs a hub:// vector store") as caught:
        await trainer(None).train(
            TrainingRequest(uuid.uuid4(), uuid.uuid4(), ["q"], [1], local, embedder), report
        )
    assert str(tmp_path) not in str(caught.value)  # no server path in a run's message


def test_recall_figures_are_read_from_the_job_progress() -> None:
    assert recall_from_progress({"best_recall@10": "86.00% (+15.00%)"}) == pytest.approx(
        (0.86, 0.15)
    )
    assert recall_from_progress({"best_recall@10": "40.0% (-2.5%)"}) == pytest.approx(
        (0.40, -0.025)
    )
    assert recall_from_progress({"eta": 3}) is None
    assert recall_from_progress(None) is None


async def _pause() -> None:
    await asyncio.sleep(0.05)
