"""What a load benchmark measures with: an open-loop request scheduler, a bare SSE client
that only stamps what it receives, an RSS sampler, and the kernel's view of a port's
sockets; and a producer of events written as another instance would write them."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import re
import resource
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from load_cluster import TOKEN, Instance  # scripts/, beside this file

from deepmemory_service.db.database import queries

# --------------------------------------------------------------------------- open loop


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    # (seconds into the run when it was scheduled, latency), for a look at when it was slow
    timeline: list[tuple[float, float]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    late_start_max: float = 0.0  # how far behind its timetable the scheduler ever was
    wall_s: float = 0.0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


Request = Callable[[int], Awaitable[tuple[int, Any]]]
Check = Callable[[int, Any], str | None]


async def open_loop(
    n: int, rate: float, request: Request, check: Check | None = None
) -> tuple[Outcome, list[Any]]:
    """`request(i)` for i < n, the i-th at start + i/rate whatever the replies do; each
    latency runs from the scheduled time to the reply's last byte."""
    loop = asyncio.get_running_loop()
    out = Outcome()
    bodies: list[Any] = [None] * n
    start = loop.time() + 0.05

    async def one(i: int, at: float) -> None:
        try:
            status, body = await request(i)
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.error(type(exc).__name__)
            return
        out.latencies.append(loop.time() - at)
        out.timeline.append((at - start, loop.time() - at))
        bodies[i] = body
        problem = check(status, body) if check else None
        if problem:
            out.error(problem)

    tasks = []
    for i in range(n):
        at = start + i / rate
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        out.late_start_max = max(out.late_start_max, loop.time() - at)
        tasks.append(asyncio.create_task(one(i, at)))
    await asyncio.gather(*tasks)
    out.wall_s = loop.time() - start
    return out, bodies


def bursts(timeline: list[tuple[float, float]], over_s: float) -> str:
    """When the slow requests were scheduled: runs of them (gaps under 0.25 s) as
    "at 5.1 s: 23, up to 104 ms" (seconds into the run, how many, the worst)."""
    slow = sorted((t, lat) for t, lat in timeline if lat > over_s)
    groups: list[list[tuple[float, float]]] = []
    for t, lat in slow:
        if groups and t - groups[-1][-1][0] < 0.25:
            groups[-1].append((t, lat))
        else:
            groups.append([(t, lat)])
    return "; ".join(
        f"at {g[0][0]:.1f} s: {len(g)}, up to {max(lat for _, lat in g) * 1000:.0f} ms"
        for g in groups
    )


# --------------------------------------------------------------------------- SSE


SSE_LINE = re.compile(rb"\r\n|\r|\n")
SSE_BLOCK = re.compile(rb"(?:\r\n|\r|\n){2}")


class SseClient(asyncio.Protocol):
    """One SSE subscriber on a bare asyncio protocol: `data_received` only stamps and keeps
    the bytes (parsing happens afterwards), so the client adds little to what it measures.
    `Connection: close` makes the end of the stream the end of the connection. A `stalled`
    client has a 4 KB receive buffer and reads nothing until `resume()`."""

    def __init__(self, inst: Instance, job_id: str, user: uuid.UUID, stalled: bool) -> None:
        self.instance = inst.name
        self.request = (
            f"GET /v1/api/events/stream/{job_id}?user_id={user} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{inst.port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
        ).encode()
        self.stalled = stalled
        self.parts: list[bytes] = []
        self.times: list[float] = []
        self.first_byte = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)
        if self.stalled:
            transport.pause_reading()
            self.first_byte.set_result(time.time())

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.parts.append(data)
        self.times.append(now)
        if not self.first_byte.done():
            self.first_byte.set_result(now)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.first_byte, self.closed):
            if not future.done():
                future.set_result(time.time())

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    @property
    def connected(self) -> float:
        """When the first bytes came (headers, and the replayed events with them)."""
        return self.first_byte.result() if self.first_byte.done() else 0.0

    def events(self) -> tuple[int, list[tuple[int, str, float]], int]:
        """(HTTP status, [(id, event, receive time)], bytes): a chunked HTTP/1.1 response
        taken apart. aiohttp writes each event as one chunk; an event's receive time is that
        of the read that brought the chunk's last byte."""
        raw = b"".join(self.parts)
        ends = list(itertools.accumulate(len(p) for p in self.parts))
        head_end = raw.find(b"\r\n\r\n")
        if not raw.startswith(b"HTTP/") or head_end < 0:
            return 0, [], len(raw)
        status = int(raw.split(b" ", 2)[1])
        found: list[tuple[int, str, float]] = []
        pos = head_end + 4
        while True:
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(raw[pos:eol].split(b";")[0] or b"0", 16)
            end = eol + 2 + size
            if size == 0 or end > len(raw):
                break
            at = self.times[bisect.bisect_left(ends, end)]
            # SSE allows CRLF, LF or CR line ends; the chunk framing above is HTTP's CRLF
            for block in SSE_BLOCK.split(raw[eol + 2 : end]):
                ident, kind = None, ""
                for line in SSE_LINE.split(block):
                    if line.startswith(b"id: "):
                        ident = int(line[4:])
                    elif line.startswith(b"event: "):
                        kind = line[7:].decode()
                if ident is not None:
                    found.append((ident, kind, at))
            pos = end + 2
        return status, found, len(raw)


async def subscribe(
    inst: Instance, job_id: str, user: uuid.UUID, gate: asyncio.Semaphore, stalled: bool = False
) -> SseClient:
    """Connects a subscriber and waits for its first bytes; `gate` bounds how many are
    connecting at once (the listen backlog)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if stalled:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    client = SseClient(inst, job_id, user, stalled)
    async with gate:
        await loop.sock_connect(sock, ("127.0.0.1", inst.port))
        await loop.create_connection(lambda: client, sock=sock)
        await asyncio.wait_for(client.first_byte, 60)
    return client


class RssSampler:
    """Peak RSS of some processes, sampled every 50 ms while it runs."""

    def __init__(self, instances: list[Instance]) -> None:
        self.instances = instances
        self.peak = {i.name: i.rss() for i in instances}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for inst in self.instances:
                self.peak[inst.name] = max(self.peak[inst.name], inst.rss())
            await asyncio.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def event_times(db_url: str, job_id: str) -> dict[int, tuple[str, float]]:
    """id → (event, created_at as a Unix time): when PostgreSQL stored the event."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT id, event, extract(epoch FROM created_at)::float8 AS t "
            "FROM job_events WHERE job_id = $1 ORDER BY id",
            uuid.UUID(job_id),
        )
    finally:
        await conn.close()
    return {r["id"]: (r["event"], r["t"]) for r in rows}


# --------------------------------------------------------------------------- sockets


def tcp_wmem_max() -> int | None:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return None


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def kernel_send_queue(port: int) -> tuple[int, int]:
    """(connections, bytes) of data the kernel holds unsent or unacknowledged on the TCP
    connections served on `port`, closing ones included (Linux /proc/net/tcp; else (0, 0))."""
    conns = queued = 0
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return 0, 0
    for line in lines:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        # every state but LISTEN: a server that wrote its last event and closed is FIN_WAIT
        tx = int(queues.split(":")[0], 16)
        if state != "0A" and tx and int(local.rsplit(":", 1)[1], 16) == port:
            conns += 1
            queued += tx
    return conns, queued


# --------------------------------------------------------------------------- events


@dataclass
class Producer:
    """A job run by "another instance": rows and events written with the service's own SQL,
    so every instance learns of the events only through NOTIFY, as from a real peer."""

    db_url: str
    user: uuid.UUID = field(default_factory=uuid.uuid4)
    run_id: uuid.UUID = field(default_factory=uuid.uuid4)
    job_id: uuid.UUID = field(default_factory=uuid.uuid4)
    conn: Any = None

    async def open(self) -> None:
        self.conn = await asyncpg.connect(self.db_url)
        await self.conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        await self.conn.execute(
            "INSERT INTO training_runs (id, user_id, status, questions_per_chunk, "
            "chunk_id_max, total_chunks) VALUES ($1, $2, 'generated', 3, 0, 0)",
            self.run_id,
            self.user,
        )
        await self.conn.execute(
            "INSERT INTO jobs (id, run_id, user_id, kind) VALUES ($1, $2, $3, 'generate')",
            self.job_id,
            self.run_id,
            self.user,
        )

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        await self.conn.fetchrow(
            queries()["insert_event"], self.job_id, event, data, "bench-producer"
        )

    async def progress(self, n: int) -> float:
        """`n` progress events shaped like the service's, as fast as one connection goes;
        the seconds it took."""
        started = time.monotonic()
        for i in range(n):
            await self.emit(
                "progress",
                {
                    "job_id": str(self.job_id),
                    "run_id": str(self.run_id),
                    "status": "generating",
                    "done": i + 1,
                    "total": n,
                    "fraction": round((i + 1) / n, 4),
                    "message": f"Generated questions for {i + 1}/{n} chunks",
                },
            )
        return time.monotonic() - started

    async def finish(self) -> None:
        """As `jobs.end_done`: the terminal event first, then the job row."""
        await self.emit("done", {"run_id": str(self.run_id), "status": "generated"})
        await self.conn.execute(queries()["finish_job"], self.job_id, "succeeded")
        await self.conn.close()
