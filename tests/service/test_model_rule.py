"""One rule for which Deep Memory model is used, the same in the settings and in search: the
last training's, and only when its verdict let it be enabled. After a training whose model
was kept out, no model is used, not even the one an earlier training left with the trainer."""

from __future__ import annotations

import uuid
from typing import Any

from deepmemory_service.testing.fakes import ControlledGenerator, ScriptedTrainer
from tests.conftest import Api

KEPT_OUT = "The last trained Deep Memory model was not enabled. It scored worse than no model."


async def train(api: Api, user: uuid.UUID) -> dict[str, Any]:
    code, body = await api.call(
        "POST",
        "/deep-memory/generate",
        json={"user_id": str(user), "auto_train": True, "regenerate": True},
    )
    assert code == 202, body
    run = await api.wait_status(user, body["training_run_id"], "completed")
    await api.idle(user)
    return run


async def search(api: Api, user: uuid.UUID, **params: str) -> tuple[int, Any]:
    return await api.call(
        "GET", "/search", params={"user_id": str(user), "q": "advisory locks", "k": "3", **params}
    )


async def settings(api: Api, user: uuid.UUID) -> dict[str, Any]:
    code, body = await api.call("GET", "/deep-memory/settings", params={"user_id": str(user)})
    assert code == 200
    return dict(body)


async def test_a_refused_model_stops_deep_memory_everywhere_until_one_is_enabled(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    trainer = ScriptedTrainer(keeps_model=True, verdicts=[True, False, True])
    api: Api = await api_factory(generator=ControlledGenerator(), trainer=trainer)
    await api.ingest(user_id, 8)

    first = await train(api, user_id)
    code, on = await api.call(
        "PUT", "/deep-memory/settings", json={"user_id": str(user_id), "enabled": True}
    )
    assert (code, on["enabled"], on["last_training_run_id"]) == (200, True, first["id"])
    code, found = await search(api, user_id)
    assert (code, found["deep_memory"]) == (200, True)
    plain_code, plain = await search(api, user_id, deep_memory="false")
    assert plain_code == 200
    # the scripted model's order is not plain search's
    assert [h["chunk_id"] for h in found["results"]] != [h["chunk_id"] for h in plain["results"]]

    # the second training's model is refused: the trainer still holds the first one, but
    # neither is used, and the settings say so
    second = await train(api, user_id)
    assert trainer.model_run_id == uuid.UUID(first["id"])
    now = await settings(api, user_id)
    assert (now["enabled"], now["can_enable"], now["last_training_run_id"]) == (
        False,
        False,
        second["id"],
    )
    assert now["can_enable_reason"] == "It scored worse than no model."
    assert await search(api, user_id, deep_memory="true") == (409, {"detail": KEPT_OUT})
    code, default = await search(api, user_id)
    assert (code, default["deep_memory"], default["results"]) == (200, False, plain["results"])
    code, refused = await api.call(
        "PUT", "/deep-memory/settings", json={"user_id": str(user_id), "enabled": True}
    )
    assert (code, refused["detail"]) == (
        409,
        "Deep Memory cannot be enabled. It scored worse than no model.",
    )

    # a third training's model may be enabled again, and is used once it is
    await train(api, user_id)
    code, found = await search(api, user_id, deep_memory="true")
    assert (code, found["deep_memory"]) == (200, True)
