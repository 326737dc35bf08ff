"""Training with the real local trainer, and search with and without the trained model."""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from deepmemory_service.models import Chunk
from deepmemory_service.rate_budget import Lane
from deepmemory_service.testing.fakes import ScriptedTrainer
from deepmemory_service.trainer_local import model_path
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
# every question the offline generator writes carries some of these words: a chunk full of
# them pulls template-shaped questions toward itself until a model learns to ignore them
DISTRACTOR = (
    "What the text says, the role, how it is related, why it matters, what someone "
    "should know, how it works, when used together, what is described, the details "
    "given, what happens according to the passage."
)


def corpus() -> list[dict[str, str]]:
    docs = [{"title": "about", "text": DISTRACTOR}]
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


async def test_local_training_completes_and_updates_settings(api: Api, user_id: uuid.UUID) -> None:
    await ingest_corpus(api, user_id)
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

    code, settings = await api.call(
        "GET", "/deep-memory/settings", params={"user_id": str(user_id)}
    )
    assert settings["last_training_run_id"] == body["training_run_id"]
    assert settings["trained_chunk_count"] == len(corpus())
    assert settings["trainer"] == "local"
    store = api.services.stores.for_user(user_id)
    if settings["can_enable"]:
        assert model_path(store).exists()  # one stat in a test
        assert metrics["with_model"]["recall@1"] >= metrics["without_model"]["recall@1"]
    else:
        assert "scored recall@1" in settings["can_enable_reason"]


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


async def test_search_with_the_trained_model_beats_search_without(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    api: Api = await api_factory(generator=NoisyGenerator())
    words = [f"{kind}{i}" for i in range(30) for kind in ("amber", "cobalt", "jade", "ochre")]
    chunks = [" ".join(words[i * 4 : i * 4 + 4]) + "." for i in range(30)]
    docs = [{"text": NOISE + "."}] + [{"text": c} for c in chunks]
    code, _ = await api.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": docs}
    )
    assert code == 201
    _, body = await api.call(
        "POST",
        "/deep-memory/generate",
        json={"user_id": str(user_id), "questions_per_chunk": 4, "auto_train": True},
    )
    run = await api.wait_status(user_id, body["training_run_id"], "completed", timeout=120)
    held_out = run["metrics"]
    assert held_out["with_model"]["recall@1"] > held_out["without_model"]["recall@1"] + 0.3

    async def right_answers(deep_memory: bool) -> int:
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

    without, with_model = await right_answers(False), await right_answers(True)
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
