"""The job event stream: progress through to the terminal event, replay by Last-Event-ID."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
import struct
import uuid
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web import BaseRunner
from aiohttp_sse import EventSourceResponse
from structlog.testing import capture_logs

from deepmemory_service.models import JobEvent
from deepmemory_service.platform.config import Settings
from deepmemory_service.runs.broadcaster import Subscription
from deepmemory_service.testing.client import poll
from deepmemory_service.testing.fakes import ControlledGenerator
from tests.conftest import Api, SseEvent, read_stream


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
    # a queue of one event: any burst overflows it, and the stream must still be complete
    tiny = attrs.evolve(settings, supervisor=attrs.evolve(settings.supervisor, subscriber_queue=1))
    gen = ControlledGenerator()
    gen.hold()
    api: Api = await api_factory(tiny, generator=gen)
    await api.ingest(user_id, 30)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    job = uuid.UUID(body["job_id"])
    live = asyncio.create_task(read_stream(api, user_id, body["job_id"]))
    await asyncio.wait_for(gen.started.wait(), 10)
    await _wait_subscribers(api, 1)
    assert (await api.debug())["broadcaster"]["lagged"] == 0
    # a burst published at once, as the listener publishes a batch of another instance's
    # events: the stream cannot take one before the next arrives, so its queue overflows
    svc = api.services
    async with svc.db.conn() as conn:
        burst = [
            JobEvent(
                await conn.insert_event(job, "progress", {"burst": i}, svc.instance_id),
                job,
                "progress",
                {"burst": i},
            )
            for i in range(5)
        ]
    for event in burst:
        svc.broadcaster.publish(event)
    gen.release()
    events = await live

    # the subscriber lagged, and what its dropped queue held came from the database
    assert (await api.debug())["broadcaster"]["lagged"] >= 1
    assert [e.data for e in events if "burst" in e.data] == [{"burst": i} for i in range(5)]
    stored = await read_stream(api, user_id, body["job_id"], last_event_id=0)
    assert events == stored
    assert events[-1].event == "done"


async def test_departed_clients_are_unsubscribed(
    api_factory: Any, user_id: uuid.UUID, monkeypatch: Any
) -> None:
    from deepmemory_service.api import sse

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
    await poll(
        _now(lambda: broadcaster.subscriber_count),
        lambda count: count == 0,
        lambda _: "the subscription leaked",
        10,
    )
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


class Follower:
    """A subscriber that reads a job's stream as it comes and records every event. It reads
    what arrives, not line by line: a line may be longer than aiohttp's line limit."""

    def __init__(
        self, api: Api, user_id: uuid.UUID, job_id: str, last_event_id: int | None = None
    ) -> None:
        self.events: list[SseEvent] = []
        self._fields: dict[str, str] = {}
        self._changed = asyncio.Condition()
        self.task = asyncio.create_task(self._read(api, user_id, job_id, last_event_id))

    async def _read(
        self, api: Api, user_id: uuid.UUID, job_id: str, last_event_id: int | None
    ) -> list[SseEvent]:
        headers = dict(api.headers)
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        async with api.client.get(
            f"/v1/api/events/stream/{job_id}", params={"user_id": str(user_id)}, headers=headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            pending = b""
            async for piece in resp.content.iter_any():
                *lines, pending = (pending + piece).split(b"\n")
                for line in lines:
                    await self._line(line.rstrip(b"\r").decode())
        return self.events

    async def _line(self, line: str) -> None:
        if line.startswith(":"):
            return
        if line:
            name, _, value = line.partition(":")
            self._fields[name] = value.removeprefix(" ")
            return
        fields, self._fields = self._fields, {}
        if "data" in fields:
            async with self._changed:
                self.events.append(
                    SseEvent(
                        int(fields["id"]),
                        fields.get("event", "message"),
                        json.loads(fields["data"]),
                    )
                )
                self._changed.notify_all()

    async def seen(self, event_id: int, timeout: float = 30) -> None:
        """Until the event `event_id` (or a later one) has arrived."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(
                lambda: bool(self.events) and self.events[-1].id >= event_id
            )


class ServedServer(TestServer):
    """The app as `serve` runs it: a handler is not cancelled when its client's connection
    is lost (aiohttp's test server cancels it), so the stream itself meets the lost connection."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


T = TypeVar("T")


def _now(read: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A plain read as a probe for `poll`."""

    async def probe() -> T:
        return read()

    return probe


async def _wait_subscribers(api: Api, wanted: int) -> None:
    """Until the service's live subscriber count (its debug snapshot) is `wanted`."""

    async def count() -> int:
        return int((await api.debug())["broadcaster"]["subscribers"])

    await poll(count, lambda n: n == wanted, lambda n: f"{n} subscribers, not {wanted}")


async def _wait_alive(refs: list[weakref.ref[Any]], wanted: int) -> None:
    """Until exactly `wanted` of the objects behind `refs` are alive."""

    def alive() -> int:
        gc.collect()
        return sum(r() is not None for r in refs)

    await poll(_now(alive), lambda n: n == wanted, lambda n: f"{n} alive, not {wanted}")


def _send_buffer_max() -> int:
    """The most a TCP socket's send buffer autotunes to (Linux: tcp_wmem's third field)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024


@pytest.mark.parametrize("ending", ["cut", "reset"])
async def test_a_stalled_subscriber_ends_alone_and_is_released(
    make_app: Any,
    aiohttp_client: Any,
    settings: Settings,
    user_id: uuid.UUID,
    caplog: pytest.LogCaptureFixture,
    ending: str,
) -> None:
    """A client stops reading. After `http.sse_send_timeout_s` its stream is cut ("cut"), or
    it resets the connection first ("reset"): either way the stream ends with a log line, not
    an error, its memory is released, and the other subscribers get every event."""
    bound = 1.0 if ending == "cut" else 60.0
    tuned = attrs.evolve(settings, http=attrs.evolve(settings.http, sse_send_timeout_s=bound))
    gen = ControlledGenerator()
    gen.hold()  # the run stays `generating` until released: its streams stay live
    api = Api(await aiohttp_client(ServedServer(make_app(tuned, generator=gen))))
    await api.ingest(user_id, 3)
    _, body = await api.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    job_id, job = body["job_id"], uuid.UUID(body["job_id"])
    await asyncio.wait_for(gen.started.wait(), 10)
    loop = asyncio.get_running_loop()
    server = api.client.server

    # the stalled client: a small receive buffer, and after the response head it reads nothing
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.setblocking(False)
    with capture_logs() as logs, contextlib.closing(stalled):
        healthy = [Follower(api, user_id, job_id) for _ in range(2)]
        await loop.sock_connect(stalled, (server.host, server.port))
        await loop.sock_sendall(
            stalled,
            f"GET /v1/api/events/stream/{job_id}?user_id={user_id} HTTP/1.1\r\n"
            f"Host: {server.host}:{server.port}\r\nAuthorization: Bearer {api.token}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode(),
        )
        received = b""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in received:
                piece = await loop.sock_recv(stalled, 1024)
                assert piece, f"the stream ended before its head: {received!r}"
                received += piece
        assert received.startswith(b"HTTP/1.1 200"), received
        for follower in healthy:
            await follower.seen(0)  # its response has started
        await _wait_subscribers(api, 3)
        # exact types: isinstance would touch every live object's __class__, and some warn
        gc.collect()
        responses = [weakref.ref(o) for o in gc.get_objects() if type(o) is EventSourceResponse]
        subs = [
            weakref.ref(o) for o in gc.get_objects() if type(o) is Subscription and o.job_id == job
        ]
        assert (len(responses), len(subs)) == (3, 3)

        # in one burst, more than the buffers between the service and the stalled client hold:
        # its receive buffer, the service's send buffer at its largest, the transport's own
        pad = "x" * (512 * 1024)
        fill = stalled.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) + _send_buffer_max()
        filler = [
            await api.services.events.emit(job, "progress", {"filler": i, "message": pad})
            for i in range(fill // len(pad) + 2)
        ]
        for follower in healthy:
            await follower.seen(filler[-1].id)
        if ending == "reset":
            # the stalled stream waits in a write now: the client leaves with a reset
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stalled.close()
        await _wait_subscribers(api, 2)  # the stalled stream is over

        ended = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("event ")]
        if ending == "reset":
            assert ended == [("event stream ended: the client's connection was lost", "info")]
        else:
            # the service's timeout, or the kernel's TCP_USER_TIMEOUT (the same bound)
            assert ended == [
                ("event stream cut: the client accepted nothing for a long time", "warning")
            ]
            # all the stalled client can still read ends short: in a reset, or at least
            # without the chunked end of a finished response
            async with asyncio.timeout(10):
                with contextlib.suppress(ConnectionResetError):
                    while piece := await loop.sock_recv(stalled, 65536):
                        received += piece
            assert f"id: {filler[-1].id}\n".encode() not in received
            assert not received.endswith(b"0\r\n\r\n")

        # the stalled stream's response and subscription (with the events queued for it) are
        # garbage now, while the job and the healthy streams go on
        await _wait_alive(responses, 2)
        await _wait_alive(subs, 2)

        gen.release()
        streams = [await asyncio.wait_for(f.task, 30) for f in healthy]
        stored = await asyncio.wait_for(Follower(api, user_id, job_id, 0).task, 30)

    assert stored[-1].event == "done"
    assert {e.id for e in filler} <= {e.id for e in stored}
    assert streams == [stored, stored]
    await _wait_subscribers(api, 0)
    await _wait_alive(subs, 0)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_burst_on_one_instance_reaches_subscribers_on_another_whole_and_in_order(
    api_factory: Any, settings: Settings, user_id: uuid.UUID
) -> None:
    """Two instances on one database: a burst of a job's events on A reaches B's subscribers
    through NOTIFY (B reads what piled up in one round trip), every one, in order."""
    gen = ControlledGenerator()
    gen.hold()
    a = await api_factory(attrs.evolve(settings, instance_id="instance-a"), generator=gen)
    b = await api_factory(attrs.evolve(settings, instance_id="instance-b"))
    await a.ingest(user_id, 3)
    _, body = await a.call("POST", "/deep-memory/generate", json={"user_id": str(user_id)})
    job_id, job = body["job_id"], uuid.UUID(body["job_id"])
    await asyncio.wait_for(gen.started.wait(), 10)

    on_b = asyncio.create_task(read_stream(b, user_id, job_id, timeout=60))
    await poll(
        _now(lambda: b.services.broadcaster.has_subscribers(job)),
        bool,
        lambda _: "B's stream never subscribed",
    )
    # one after another, as a job's one writer emits them (ids and commits in the same order)
    burst = [await a.services.events.emit(job, "progress", {"burst": i}) for i in range(300)]
    gen.release()
    seen = await on_b
    stored = await read_stream(a, user_id, job_id, last_event_id=0)

    assert seen[-1].event == "done"
    assert {e.id for e in burst} <= {e.id for e in seen}
    # B's live stream is the stored one from its first event on, nothing missing or doubled
    assert seen == [e for e in stored if e.id >= seen[0].id]
