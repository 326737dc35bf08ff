"""Training with the real local trainer, and search with and without the trained model."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import attrs

from deepmemory_service.llm.rate_budget import Lane
from deepmemory_service.models import Chunk
from deepmemory_service.platform.config import Settings
from deepmemory_service.testing.fakes import ScriptedTrainer
from deepmemory_service.training.adapter import model_path
from tests.conftest import Api

TOPICS = [
    ("volcano", "magma basalt eruption caldera lava crater"),
    ("glacier", "ice moraine crevasse firn meltwater serac"),
    ("reef", "coral polyp lagoon atoll algae spawning"),
    ("desert", "dune sandstorm oasis cactus mirage arid"),
    ("forest", "canopy fern moss lichen understory timber"),
    ("river", "delta estuary meander sediment floodplain current"),
    ("cave", "stalactite stalagmite karst cavern guano sinkhole"),
    ("prairie", "bison grassland sod tallgrass wildfire burrow"),
    ("tundra", "permafrost caribou lemming sedge frost tussock"),
    ("marsh", "reed heron bog peat cattail wetland"),
    ("canyon", "mesa butte gorge strata erosion plateau"),
    ("island", "archipelago tide shoal cove palm lagoon"),
]


def corpus() -> list[dict[str, str]]:
    docs = []
    for name, words in TOPICS:
        w = words.split()
        for part in range(3):
            docs.append(
                {
                    "title": f"{name} {part}",
                    "text": (
                        f"The {name} section {part} explains {w[part]} and {w[part + 1]}."
                        " "
                        f"Observers of the {name} record {w[(part + 2) % 6]}"
                        f" and {w[(part + 3) % 6]}."
                    ),
                }
            )
    return docs


async def ingest_corpus(api: Api, user_id: uuid.UUID) -> None:
    code, body = await api.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": corpus()}
    )
    assert code == 201, body


@attrs.define
class NoisyGenerator:
    """Questions that carry the same noise words as the distractor chunk, plus one of the
    chunk's own words: before training, the distractor wins every search."""

    name: str = "noisy"

    async def generate(self, chunk: Chunk, count: int, lane: Lane | None = None) -> list[str]:
        words = chunk.text.rstrip(".").split()
        return [f"{NOISE} {words[i % len(words)]}?" for i in range(count)]

    async def aclose(self) -> None:
        return None


NOISE = "zebra quokka axolotl narwhal okapi"


def noisy_documents() -> tuple[list[str], list[dict[str, str]]]:
    """Thirty chunks of four words each, and a distractor made of the noise words."""
    words = [f"{kind}{i}" for i in range(30) for kind in ("amber", "cobalt", "jade", "ochre")]
    chunks = [" ".join(words[i * 4 : i * 4 + 4]) + "." for i in range(30)]
    return chunks, [{"text": NOISE + "."}] + [{"text": c} for c in chunks]


def seeded(settings: Settings) -> Settings:
    """The trainer seeded alike for every run (`DEEPMEMORY_TRAIN_SEED`): on this small
    corpus, the split of the held-out questions decides whether one query falls out of the
    top 10, and the strict rule then keeps the model out; with a fixed seed the outcome is
    the trainer's, not the run id's."""
    return attrs.evolve(settings, train=attrs.evolve(settings.train, seed=TRAIN_SEED))


TRAIN_SEED = 4


async def noisy_service(
    api_factory: Any, settings: Settings, user_id: uuid.UUID
) -> tuple[Api, tuple[list[str], list[dict[str, str]]]]:
    """A service whose generator writes noisy questions (seeded trainer), with the noisy
    documents added for `user_id`."""
    api: Api = await api_factory(seeded(settings), generator=NoisyGenerator())
    chunks, docs = noisy_documents()
    code, _ = await api.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": docs}
    )
    assert code == 201
    return api, (chunks, docs)


async def right_answers(
    api: Api, user_id: uuid.UUID, chunks: list[str], *, deep_memory: bool
) -> int:
    """How many of the noisy questions (`NOISE` and one of a chunk's words) find their chunk
    first, with or without Deep Memory."""
    right = 0
    for chunk in chunks:
        code, found = await api.call(
            "GET",
            "/search",
            params={
                "user_id": str(user_id),
                "q": f"{NOISE} {chunk.split()[2]}",
                "k": "1",
                "deep_memory": str(deep_memory).lower(),
            },
        )
        assert code == 200, found
        assert found["deep_memory"] is deep_memory
        right += found["results"][0]["text"] == chunk
    return right


async def test_local_training_completes_enables_and_updates_settings(
    api_factory: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    api, (_, docs) = await noisy_service(api_factory, settings, user_id)
    code, body = await api.call(
        "POST",
        "/deep-memory/generate",
        json={"user_id": str(user_id), "questions_per_chunk": 4, "auto_train": True},
    )
    assert code == 202
    run = await api.wait_status(
        user_id, body["training_run_id"], "completed", "training_failed", timeout=120
    )
    assert run["status"] == "completed", run["error_message"]
    metrics = run["metrics"]
    assert set(metrics["with_model"]) == {"recall@1", "recall@3", "recall@5", "recall@10"}
    assert metrics["eval_queries"] > 0
    # judged on queries like people's too: the chunks' own sentences and key terms
    assert metrics["plain_queries"] > 0
    for k in ("recall@1", "recall@10"):
        assert metrics["plain_changes"][k]["lost"] <= metrics["plain_changes"][k]["won"]

    code, settings = await api.call(
        "GET", "/deep-memory/settings", params={"user_id": str(user_id)}
    )
    assert settings["last_training_run_id"] == body["training_run_id"]
    assert settings["trained_chunk_count"] == len(docs)
    assert settings["trainer"] == "local"
    # a model that learnt to ignore the noise words helps: it may be enabled, and is saved
    assert settings["can_enable"] is True, settings["can_enable_reason"]
    assert settings["can_enable_reason"] is None
    assert model_path(api.services.stores.for_user(user_id)).exists()
    code, settings = await api.call(
        "PUT", "/deep-memory/settings", json={"user_id": str(user_id), "enabled": True}
    )
    assert (code, settings["enabled"]) == (200, True)


@attrs.define
class UnrelatedGenerator:
    """Questions that say nothing about their chunk: no model can learn from them."""

    name: str = "unrelated"

    async def generate(self, chunk: Chunk, count: int, lane: Lane | None = None) -> list[str]:
        return [f"lorem{(chunk.id * 7 + i) % 13} ipsum{(chunk.id + i) % 5}" for i in range(count)]

    async def aclose(self) -> None:
        return None


async def test_a_model_kept_out_is_explained_and_searches_say_why(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    api: Api = await api_factory(generator=UnrelatedGenerator())
    await ingest_corpus(api, user_id)
    _, body = await api.call(
        "POST",
        "/deep-memory/generate",
        json={"user_id": str(user_id), "questions_per_chunk": 2, "auto_train": True},
    )
    run = await api.wait_status(user_id, body["training_run_id"], "completed", timeout=120)
    _, settings = await api.call("GET", "/deep-memory/settings", params={"user_id": str(user_id)})
    assert settings["last_training_run_id"] == run["id"]
    assert settings["can_enable"] is False
    reason = settings["can_enable_reason"]
    # a sentence that starts with a capital and names what was measured
    assert reason.startswith(("No model was better", "It was no better", "It lost more searches"))
    assert reason.endswith(".")
    assert not model_path(api.services.stores.for_user(user_id)).exists()
    code, found = await api.call(
        "GET", "/search", params={"user_id": str(user_id), "q": "magma", "deep_memory": "true"}
    )
    assert (code, found) == (
        409,
        {"detail": f"The last trained Deep Memory model was not enabled. {reason}"},
    )
    code, refused = await api.call(
        "PUT", "/deep-memory/settings", json={"user_id": str(user_id), "enabled": True}
    )
    assert (code, refused) == (409, {"detail": f"Deep Memory cannot be enabled. {reason}"})


async def test_search_with_the_trained_model_beats_search_without(
    api_factory: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    api, (chunks, _) = await noisy_service(api_factory, settings, user_id)
    _, body = await api.call(
        "POST",
        "/deep-memory/generate",
        json={"user_id": str(user_id), "questions_per_chunk": 4, "auto_train": True},
    )
    run = await api.wait_status(user_id, body["training_run_id"], "completed", timeout=120)
    held_out = run["metrics"]
    assert held_out["with_model"]["recall@1"] > held_out["without_model"]["recall@1"] + 0.3

    without = await right_answers(api, user_id, chunks, deep_memory=False)
    with_model = await right_answers(api, user_id, chunks, deep_memory=True)
    assert without <= 3
    assert with_model >= 20


async def test_search_without_a_model_is_refused_clearly(api: Api, user_id: uuid.UUID) -> None:
    await api.ingest(user_id, 3)
    code, body = await api.call(
        "GET", "/search", params={"user_id": str(user_id), "q": "anything", "deep_memory": "true"}
    )
    assert (code, body) == (
        409,
        {"detail": "No trained Deep Memory model for this user: train a run first"},
    )
    code, body = await api.call("GET", "/search", params={"user_id": str(user_id), "q": "x"})
    assert code == 200
    assert body["deep_memory"] is False
    code, body = await api.call("GET", "/search", params={"user_id": str(user_id)})
    assert (code, body) == (422, {"detail": "q: field required"})


async def test_a_trainer_fault_is_training_failed_then_proceed_completes(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    trainer = ScriptedTrainer(failures=1)
    api: Api = await api_factory(trainer=trainer)
    await api.ingest(user_id, 6)
    _, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), "auto_train": True}
    )
    await api.wait_status(user_id, body["training_run_id"], "training_failed")
    await api.idle(user_id)
    code, reply = await api.call(
        "POST",
        "/deep-memory/proceed",
        json={"user_id": str(user_id), "training_run_id": body["training_run_id"]},
    )
    assert code == 202
    assert reply["message"].startswith("Resuming training with 18 pairs")
    await api.wait_status(user_id, body["training_run_id"], "completed")
    assert trainer.submissions[0] == trainer.submissions[1]


async def test_one_question_per_chunk_trains_through_the_service(
    api: Api, user_id: uuid.UUID
) -> None:
    """The cheapest LLM setting, which failed training outright ("chunks need two questions
    or more"): now the run completes and the model is judged like any other."""
    await ingest_corpus(api, user_id)
    _, body = await api.call(
        "POST",
        "/deep-memory/generate",
        json={"user_id": str(user_id), "questions_per_chunk": 1, "auto_train": True},
    )
    run = await api.wait_status(
        user_id, body["training_run_id"], "completed", "training_failed", timeout=120
    )
    assert run["status"] == "completed", run["error_message"]
    assert run["pair_count"] == len(corpus())
    assert run["metrics"]["eval_queries"] + run["metrics"]["validation_queries"] > 0
    _, settings = await api.call("GET", "/deep-memory/settings", params={"user_id": str(user_id)})
    assert settings["last_training_run_id"] == run["id"]
    assert settings["can_enable"] or settings["can_enable_reason"]


async def test_a_training_past_its_deadline_fails_with_the_deadline_named(
    api_factory: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    """DEEPMEMORY_TRAIN_TIMEOUT_S bounds a training that never ends (a trainer stuck on
    its gate): the run is training_failed, with the deadline in its message."""
    stuck = ScriptedTrainer(gate=asyncio.Event())
    short = attrs.evolve(settings, train=attrs.evolve(settings.train, timeout_s=0.5))
    api: Api = await api_factory(short, trainer=stuck)
    await api.ingest(user_id, 3)
    _, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), "auto_train": True}
    )
    run = await api.wait_status(user_id, body["training_run_id"], "training_failed")
    assert run["error_message"] == "Training timed out after 0.5s"
    assert len(stuck.submissions) == 1
