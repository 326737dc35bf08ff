"""The job event stream: progress through to the terminal event, replay by Last-Event-ID."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from deepmemory_service.testing.fakes import ControlledGenerator
from tests.conftest import Api, read_stream


async def test_stream_carries_progress_to_done_and_replays_after_last_event_id(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    gen = ControlledGenerator()
    gen.hold()
    api = await api_factory(generator=gen)
    await api.ingest(user_id, 40)
    code, body = await api.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), "questions_per_chunk": 1}
    )
    assert code == 202
    job_id = body["job_id"]

    live = asyncio.create_task(read_stream(api, user_id, job_id))
    await asyncio.wait_for(gen.started.wait(), 10)
    gen.release()
    events = await live

    kinds = [e.event for e in events]
    assert kinds[0] == "status"
    assert "progress" in kinds
    assert kinds[-1] == "done"
    assert events[-1].data == {
        "run_id": body["training_run_id"],
        "status": "generated",
        "pairs": 40,
    }
    ids = [e.id for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    progress = [e.data for e in events if e.event == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 40
    assert progress[-1]["fraction"] == 1.0
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)

    # a reconnect after the second event gets exactly the events after it
    replay = await read_stream(api, user_id, job_id, last_event_id=events[1].id)
    assert replay == events[2:]
    # and after the terminal event, nothing: the stream just closes
    assert await read_stream(api, user_id, job_id, last_event_id=events[-1].id) == []


async def test_stream_of_a_failed_run_ends_with_failed(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    api = await api_factory(generator=ControlledGenerator(fail_after=3))
    await api.ingest(user_id, 10)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    events = await read_stream(api, user_id, body["job_id"])
    assert events[-1].event == "failed"
    assert events[-1].data["status"] == "generating_failed"
    assert events[-1].data["error_message"].startswith("Question generation failed")


async def test_stream_of_unknown_or_foreign_job_is_404(
    api_factory: Any, user_id: uuid.UUID
) -> None:
    api = await api_factory(generator=ControlledGenerator())
    await api.ingest(user_id, 2)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    for job_id, owner in ((str(uuid.uuid4()), user_id), (body["job_id"], uuid.uuid4())):
        code, reply = await api.call(
            "GET", f"/events/stream/{job_id}", params={"user_id": str(owner)}
        )
        assert (code, reply) == (404, {"detail": "Job not found"})


async def test_slow_subscriber_catches_up_from_the_database(
    api_factory: Any, settings: Any, user_id: uuid.UUID
) -> None:
    import attrs

    # a queue of one event: any burst overflows it, and the stream must still be complete
    tiny = attrs.evolve(settings, supervisor=attrs.evolve(settings.supervisor, subscriber_queue=1))
    gen = ControlledGenerator()
    gen.hold()
    api: Api = await api_factory(tiny, generator=gen)
    await api.ingest(user_id, 30)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    live = asyncio.create_task(read_stream(api, user_id, body["job_id"]))
    await asyncio.wait_for(gen.started.wait(), 10)
    gen.release()
    events = await live
    stored = await read_stream(api, user_id, body["job_id"], last_event_id=0)
    assert events == stored
    assert events[-1].event == "done"


async def test_departed_clients_are_unsubscribed(
    api_factory: Any, user_id: uuid.UUID, monkeypatch: Any
) -> None:
    from deepmemory_service import sse

    monkeypatch.setattr(sse, "PING_S", 0.05)
    gen = ControlledGenerator()
    gen.hold()
    api: Api = await api_factory(generator=gen)
    await api.ingest(user_id, 3)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    broadcaster = api.services.broadcaster
    async with api.client.get(
        f"/v1/api/events/stream/{body['job_id']}",
        params={"user_id": str(user_id)},
        headers=api.headers,
    ) as resp:
        await resp.content.readline()
        assert broadcaster.subscriber_count == 1
    deadline = asyncio.get_running_loop().time() + 10
    while broadcaster.subscriber_count:
        assert asyncio.get_running_loop().time() < deadline, "the subscription leaked"
        await asyncio.sleep(0.02)
    gen.release()


async def test_shutdown_ends_open_streams_cleanly(api_factory: Any, user_id: uuid.UUID) -> None:
    import aiohttp

    gen = ControlledGenerator()
    gen.hold()
    api: Api = await api_factory(generator=gen)
    await api.ingest(user_id, 3)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    await asyncio.wait_for(gen.started.wait(), 10)
    url = api.client.make_url(f"/v1/api/events/stream/{body['job_id']}")
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params={"user_id": str(user_id)}, headers=api.headers) as resp,
    ):
        first = await resp.content.readline()
        assert first.startswith(b"id:")
        closing = asyncio.create_task(api.client.server.close())
        rest = await asyncio.wait_for(resp.content.read(), 15)  # EOF, not an error
        await asyncio.wait_for(closing, 15)
    assert b"event: failed" in rest  # the run was released as failed on the way down
