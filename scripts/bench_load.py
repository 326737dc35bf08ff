"""Load benchmark against real `serve --role backend` processes on one PostgreSQL.

1. settings: `GET /deep-memory/settings` at an open-loop 200 req/s on one instance, over a
   few hundred users; latency counts from each request's scheduled time (coordinated
   omission is not hidden)
2. commands: the 202 latency of `generate` for N users, then of `proceed` once every run
   has failed (the stand-in LLM fails every call), both on a fixed timetable
3. fan-out: 1,000 SSE subscribers on one job running on instance A, half on A and half on
   B (events reach B through NOTIFY): per-event delivery latency (receive time minus the
   stored event's created_at: the payloads carry no timestamp), `done` count, RSS
4. slow subscribers: sockets that read nothing while a job of "another instance" (rows and
   events written with the service's own SQL) emits thousands of events; the instances'
   RSS must stay bounded and every stream must still be complete afterwards

The stand-in LLM runs as a separate process on loopback. Database: DEEPMEMORY_DATABASE_URL
if set, else a fresh database on the machine's PostgreSQL, else an embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import yarl
from benchlib import free_port, fresh_database  # scripts/, beside this file

from deepmemory_service import logs, migrations
from deepmemory_service.db import queries

TOKEN = "bench-load-token"
ADMIN = "bench-load-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Sizes:
    settings_rate: float = 200.0
    settings_s: float = 10.0
    run_users: int = 200  # users with chunks: generate / proceed, and settings
    extra_users: int = 100  # users without anything, for settings only
    chunks_per_user: int = 3
    command_rate: float = 50.0  # generate (and proceed) requests per second
    subscribers: int = 1000  # half on A, half on B
    fanout_chunks: int = 400
    fanout_latency_ms: float = 150.0  # the job then runs ~fanout_chunks / 8 * latency
    hold_ms: float = 4000.0  # first LLM wave held while the subscribers connect
    slow: int = 50  # half on A, half on B
    slow_events: int = 2000
    slow_pause_s: float = 2.0  # after the job ends, before the slow sockets read


FULL = Sizes()
QUICK = Sizes(
    settings_s=3.0,
    run_users=40,
    extra_users=20,
    subscribers=200,
    fanout_chunks=120,
    fanout_latency_ms=100.0,
    hold_ms=1500.0,
    slow=10,
    slow_events=500,
    slow_pause_s=1.0,
)


# --------------------------------------------------------------------------- helpers


def pct(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": pct(ms, 50),
        "p90": pct(ms, 90),
        "p99": pct(ms, 99),
        "max": max(ms) if ms else math.nan,
    }


def fmt(s: dict[str, float], keys: tuple[str, ...] = ("p50", "p90", "p99", "max")) -> str:
    return " / ".join(f"{s[k]:.1f}" for k in keys) + " ms"


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


def tcp_wmem_max() -> int | None:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return None


def mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"


def say(text: str) -> None:
    print(text, flush=True)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@asynccontextmanager
async def database() -> AsyncIterator[tuple[str, str]]:
    """(url, where): DEEPMEMORY_DATABASE_URL as is; else a fresh database of our own on the
    machine's PostgreSQL or on an embedded one, dropped afterwards."""
    configured = os.environ.get("DEEPMEMORY_DATABASE_URL")
    if configured:
        await migrations.migrate_url(configured)
        yield configured, "DEEPMEMORY_DATABASE_URL"
        return
    async with fresh_database("dm-bench-load") as (url, where):
        yield url, where


# --------------------------------------------------------------------------- processes


def tail_of(log: Path | None) -> str:
    return log.read_text(errors="replace")[-2000:] if log and log.exists() else ""


async def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path | None) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.poll() is not None:
                tail = await asyncio.to_thread(tail_of, log)
                raise RuntimeError(f"{what} exited during start-up\n{tail}")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start within 60 s")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def standin() -> AsyncIterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepmemory_service.testing.standin_llm", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_http(f"{url}/_standin/stats", proc, "the stand-in LLM", None)
        yield url
    finally:
        await asyncio.to_thread(stop_process, proc)


async def configure(http: aiohttp.ClientSession, llm: str, **config: Any) -> None:
    async with http.post(f"{llm}/_standin/config", json=config) as resp:
        assert resp.status == 200, await resp.text()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (a graceful shutdown), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# --------------------------------------------------------------------------- instances


@dataclass
class Instance:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/api"

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)


@dataclass
class Cluster:
    db_url: str
    llm: str
    workdir: Path
    started: list[Instance] = field(default_factory=list)

    async def start(self, name: str, **extra_env: str) -> Instance:
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "LANG": "C.UTF-8",
            "DEEPMEMORY_DATABASE_URL": self.db_url,
            "DEEPMEMORY_DATA_DIR": str(self.workdir / "data"),
            "DEEPMEMORY_SERVICE_TOKEN": TOKEN,
            "DEEPMEMORY_ADMIN_TOKEN": ADMIN,
            "DEEPMEMORY_HTTP_ROLE": "backend",
            "DEEPMEMORY_INSTANCE_ID": f"bench-{name}",
            "DEEPMEMORY_GENERATOR": "llm",
            "DEEPMEMORY_LLM_BASE_URL": f"{self.llm}/v1",
            "DEEPMEMORY_LLM_TIMEOUT_S": "10",
            # failures come fast: one retry after ~10 ms
            "DEEPMEMORY_LLM_MAX_RETRIES": "1",
            "DEEPMEMORY_LLM_BACKOFF_BASE_S": "0.01",
            "DEEPMEMORY_LLM_BACKOFF_MAX_S": "0.05",
            "DEEPMEMORY_LOG_LEVEL": "warning",
            "DEEPMEMORY_LOG_FORMAT": "console",
            **extra_env,
        }
        log = self.workdir / f"instance-{name}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "deepmemory_service", "serve", "--role", "backend"),
                    *("--host", "127.0.0.1", "--port", str(port)),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        instance = Instance(name, port, proc, log)
        self.started.append(instance)
        await wait_http(f"{instance.api}/healthz", proc, f"instance {name}", log)
        return instance

    def stop_all(self) -> None:
        for instance in self.started:
            stop_process(instance.proc)


async def debug(http: aiohttp.ClientSession, inst: Instance) -> dict[str, Any]:
    async with http.get(f"{inst.api}/debug/supervisors", headers={"X-Admin-Token": ADMIN}) as resp:
        data: dict[str, dict[str, Any]] = await resp.json()
        return data["broadcaster"]


async def ingest(http: aiohttp.ClientSession, inst: Instance, user: uuid.UUID, n: int) -> None:
    """`n` one-chunk documents through the API (chunks, embeddings, the user's store)."""
    docs = [
        {
            "title": f"doc {i}",
            "text": f"Section {i}: component{i} talks to module{i % 97} through "
            f"queue{i % 13}; its timeout is {i % 60} seconds.",
        }
        for i in range(n)
    ]
    async with http.post(
        f"{inst.api}/documents", json={"user_id": str(user), "documents": docs}
    ) as resp:
        assert resp.status == 201, await resp.text()


async def run_statuses(db_url: str, users: list[uuid.UUID]) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM training_runs WHERE user_id = ANY($1) "
            "GROUP BY status",
            users,
        )
    finally:
        await conn.close()
    return {r["status"]: r["n"] for r in rows}


async def wait_runs(db_url: str, users: list[uuid.UUID], status: str, within: float) -> float:
    started = time.monotonic()
    deadline = started + within
    while True:
        counts = await run_statuses(db_url, users)
        if counts.get(status, 0) == len(users):
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise RuntimeError(f"runs did not all become {status} in {within:g} s: {counts}")
        await asyncio.sleep(0.1)


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


# --------------------------------------------------------------------------- 1. settings


async def bench_settings(
    http: aiohttp.ClientSession, inst: Instance, users: list[uuid.UUID], sizes: Sizes
) -> Outcome:
    rng = random.Random(7)
    n = int(sizes.settings_rate * sizes.settings_s)
    picks = [rng.choice(users) for _ in range(n)]
    url = f"{inst.api}/deep-memory/settings"

    async def request(i: int) -> tuple[int, Any]:
        async with http.get(url, params={"user_id": str(picks[i])}) as resp:
            return resp.status, await resp.read()

    def check(status: int, _body: Any) -> str | None:
        return None if status == 200 else f"HTTP {status}"

    # a second at the same rate first: connections opened, caches and plans warm
    warm = int(sizes.settings_rate)
    await open_loop(warm, sizes.settings_rate, lambda i: request(i % n), check)
    out, _ = await open_loop(n, sizes.settings_rate, request, check)
    return out


# --------------------------------------------------------------------------- 2. commands


async def bench_commands(
    http: aiohttp.ClientSession,
    pair: list[Instance],
    users: list[uuid.UUID],
    db_url: str,
    llm: str,
    sizes: Sizes,
) -> dict[str, Any]:
    # every LLM call fails with a 500: the runs fail within ~two calls
    await configure(http, llm, latency_ms=0, fail_after=0)
    async with http.post(f"{llm}/_standin/reset"):
        pass

    async def command(i: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        inst = pair[i % 2]
        async with http.post(f"{inst.api}/deep-memory/{path}", json=body) as resp:
            return resp.status, await resp.json()

    def accepted(status: int, body: Any) -> str | None:
        return None if status == 202 else f"HTTP {status}: {str(body)[:120]}"

    gen, bodies = await open_loop(
        len(users),
        sizes.command_rate,
        lambda i: command(i, "generate", {"user_id": str(users[i])}),
        accepted,
    )
    failed_s = await wait_runs(db_url, users, "generating_failed", 60)
    await configure(http, llm, fail_after=None)
    runs = [b["training_run_id"] if b else None for b in bodies]

    def resumed(status: int, body: Any) -> str | None:
        if status != 202:
            return f"HTTP {status}: {str(body)[:120]}"
        if not body.get("message", "").startswith("Resuming generation from chunk"):
            return f"message {body.get('message')!r}"
        return None

    pro, _ = await open_loop(
        len(users),
        sizes.command_rate,
        lambda i: command(
            i, "proceed", {"user_id": str(users[i]), "training_run_id": str(runs[i])}
        ),
        resumed,
    )
    generated_s = await wait_runs(db_url, users, "generated", 60)
    return {"generate": gen, "proceed": pro, "failed_s": failed_s, "generated_s": generated_s}


# --------------------------------------------------------------------------- 3. fan-out


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


async def bench_fanout(
    http: aiohttp.ClientSession, a: Instance, b: Instance, db_url: str, llm: str, sizes: Sizes
) -> dict[str, Any]:
    user = uuid.uuid4()
    await ingest(http, a, user, sizes.fanout_chunks)
    await asyncio.sleep(0.5)
    rss_before = {i.name: i.rss() for i in (a, b)}
    # the first wave of LLM calls is held while the subscribers connect
    await configure(http, llm, latency_ms=sizes.hold_ms, fail_after=None)
    async with http.post(f"{a.api}/deep-memory/generate", json={"user_id": str(user)}) as resp:
        assert resp.status == 202, await resp.text()
        job_id = (await resp.json())["job_id"]
    gate = asyncio.Semaphore(100)
    with RssSampler([a, b]) as sampler:
        connect_started = time.monotonic()
        subs = await asyncio.gather(
            *(subscribe((a, b)[i % 2], job_id, user, gate) for i in range(sizes.subscribers))
        )
        connect_s = time.monotonic() - connect_started
        await configure(http, llm, latency_ms=sizes.fanout_latency_ms)
        rss_connected = {i.name: i.rss() for i in (a, b)}
        await asyncio.wait_for(asyncio.gather(*(s.closed for s in subs)), 180)
    await asyncio.sleep(1.0)
    rss_after = {i.name: i.rss() for i in (a, b)}
    stored = await event_times(db_url, job_id)
    return {
        "job_id": job_id,
        "subs": subs,
        "stored": stored,
        "connect_s": connect_s,
        "rss_before": rss_before,
        "rss_connected": rss_connected,
        "rss_peak": dict(sampler.peak),
        "rss_after": rss_after,
    }


def fanout_figures(r: dict[str, Any]) -> dict[str, Any]:
    subs: list[SseClient] = r["subs"]
    stored: dict[int, tuple[str, float]] = r["stored"]
    by_instance: dict[str, list[float]] = {"a": [], "b": []}
    first_seen: dict[int, float] = {}
    replayed = done = complete = 0
    errors: list[str] = []
    parsed = []
    for s in subs:
        status, events, _ = s.events()
        parsed.append((s, events))
        if status != 200:
            errors.append(f"HTTP {status}")
        done += bool(events) and events[-1][1] == "done"
        complete += [e[0] for e in events] == sorted(stored)
        for ident, _, at in events:
            first_seen[ident] = min(first_seen.get(ident, at), at)
    spread: list[float] = []
    for s, events in parsed:
        for ident, _, at in events:
            created = stored[ident][1]
            if created <= s.connected:
                replayed += 1  # stored before this subscriber was there: a replay
                continue
            by_instance[s.instance].append(at - created)
            spread.append(at - first_seen[ident])
    every = by_instance["a"] + by_instance["b"]
    times = [t for _, t in stored.values()]
    return {
        "all": summary_ms(every),
        "a": summary_ms(by_instance["a"]),
        "b": summary_ms(by_instance["b"]),
        "spread": summary_ms(spread),
        "done": done,
        "errors": errors,
        "events": len(stored),
        "replayed": replayed,
        "job_s": max(times) - min(times) if times else 0.0,
        "complete": complete,
    }


# --------------------------------------------------------------------------- 4. slow


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


async def bench_slow(
    http: aiohttp.ClientSession, a: Instance, b: Instance, db_url: str, sizes: Sizes
) -> dict[str, Any]:
    pair = [a, b]
    producer = Producer(db_url)
    await producer.open()
    job_id = str(producer.job_id)
    rss_before = {i.name: i.rss() for i in pair}
    stats_before = {i.name: await debug(http, i) for i in pair}
    gate = asyncio.Semaphore(100)
    with RssSampler(pair) as sampler:
        slow = await asyncio.gather(
            *(
                subscribe(pair[i % 2], job_id, producer.user, gate, stalled=True)
                for i in range(sizes.slow)
            )
        )
        control = await asyncio.gather(
            *(subscribe(pair[i % 2], job_id, producer.user, gate) for i in range(10))
        )
        await asyncio.sleep(0.5)  # the stalled requests are surely in by now
        connected = {i.name: (await debug(http, i))["subscribers"] for i in pair}
        started = time.monotonic()
        emit_s = await producer.progress(sizes.slow_events)
        await producer.finish()
        await asyncio.wait_for(asyncio.gather(*(s.closed for s in control)), 180)
        delivered_s = time.monotonic() - started
        await asyncio.sleep(sizes.slow_pause_s)
        rss_stalled = {i.name: i.rss() for i in pair}
        kernel = {i.name: await asyncio.to_thread(kernel_send_queue, i.port) for i in pair}
        stats_stalled = {i.name: await debug(http, i) for i in pair}
        for s in slow:
            s.resume()
        await asyncio.wait_for(asyncio.gather(*(s.closed for s in slow)), 180)
    await asyncio.sleep(1.0)
    rss_after = {i.name: i.rss() for i in pair}
    stored = await event_times(db_url, job_id)
    expected = sorted(stored)
    complete = 0
    sizes_read = []
    for s in slow:
        status, events, size = s.events()
        sizes_read.append(size)
        if status == 200 and [e[0] for e in events] == expected and events[-1][1] == "done":
            complete += 1
    return {
        "events": len(stored),
        "emit_s": emit_s,
        "delivered_s": delivered_s,
        "connected": connected,
        "bytes_per_stream": sum(sizes_read) / max(1, len(sizes_read)),
        "complete": complete,
        "control_done": sum(1 for s in control if (ev := s.events()[1]) and ev[-1][1] == "done"),
        "rss_before": rss_before,
        "rss_peak": dict(sampler.peak),
        "rss_stalled": rss_stalled,
        "rss_after": rss_after,
        "kernel": kernel,
        "lagged": {n: stats_stalled[n]["lagged"] - stats_before[n]["lagged"] for n in stats_before},
    }


# --------------------------------------------------------------------------- main


async def bench(sizes: Sizes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with database() as (db_url, where), standin() as llm:
        out["where"] = where
        out["db_host"] = yarl.URL(db_url).host or "local socket"
        workdir = Path(tempfile.mkdtemp(prefix="dm-bench-load-"))
        cluster = Cluster(db_url, llm, workdir)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        try:
            a, b = await asyncio.gather(cluster.start("a"), cluster.start("b"))
            say(f"instances a, b up ({where}); stand-in LLM at {llm}")
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), headers=AUTH, timeout=timeout
            ) as http:
                users = [uuid.uuid4() for _ in range(sizes.run_users)]
                t = time.monotonic()
                gate = asyncio.Semaphore(8)

                async def seed(i: int) -> None:
                    async with gate:
                        await ingest(http, (a, b)[i % 2], users[i], sizes.chunks_per_user)

                await asyncio.gather(*(seed(i) for i in range(len(users))))
                out["ingest_s"] = time.monotonic() - t
                say(f"ingested {len(users)} users in {out['ingest_s']:.1f} s")

                everyone = users + [uuid.uuid4() for _ in range(sizes.extra_users)]
                out["settings"] = await bench_settings(http, a, everyone, sizes)
                say("1. settings done")
                out["commands"] = await bench_commands(http, [a, b], users, db_url, llm, sizes)
                say("2. generate / proceed done")
                out["fanout"] = await bench_fanout(http, a, b, db_url, llm, sizes)
                say("3. fan-out done")
                out["slow"] = await bench_slow(http, a, b, db_url, sizes)
                say("4. slow subscribers done")
        finally:
            await asyncio.to_thread(cluster.stop_all)
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def report(r: dict[str, Any], sizes: Sizes, nofile: int, runtime: float) -> None:
    s: Outcome = r["settings"]
    st = summary_ms(s.latencies)
    cmd = r["commands"]
    gen, pro = cmd["generate"], cmd["proceed"]
    gs, ps = summary_ms(gen.latencies), summary_ms(pro.latencies)
    fo = r["fanout"]
    ff = fanout_figures(fo)
    sl = r["slow"]
    n_users = sizes.run_users + sizes.extra_users

    say(f"\n## 1. settings GET, open loop {sizes.settings_rate:g} req/s for {sizes.settings_s:g} s")
    say(
        f"one instance, {n_users} users ({sizes.run_users} with chunks); latency from the "
        "scheduled send time"
    )
    say(
        f"count {st['n']} + {sum(s.errors.values())} errors {s.errors or ''}; "
        f"p50/p90/p99/max {fmt(st)}; "
        f"achieved {len(s.latencies) / s.wall_s:.0f} req/s; scheduler ever "
        f"{s.late_start_max * 1000:.1f} ms behind its timetable"
    )
    say(f"requests over 20 ms, by when they were scheduled: {bursts(s.timeline, 0.02) or 'none'}")

    say(f"\n## 2. 202 latency, {sizes.run_users} users alternating A/B, {sizes.command_rate:g}/s")
    say(
        f"generate: {gs['n']} replies, errors {gen.errors or 0}; p50/p90/p99/max {fmt(gs)}; "
        f"all runs generating_failed {cmd['failed_s']:.1f} s after the last reply"
    )
    say(
        f"proceed:  {ps['n']} replies, errors {pro.errors or 0}; p50/p90/p99/max {fmt(ps)}; "
        f"all runs generated {cmd['generated_s']:.1f} s after the last reply"
    )

    say(
        f"\n## 3. {sizes.subscribers} SSE subscribers on one job on A "
        f"({sizes.subscribers // 2} on A, {sizes.subscribers // 2} on B via NOTIFY)"
    )
    say(
        "delivery latency = the subscriber's receive time (wall clock) − the stored event's "
        "created_at (PostgreSQL now() at the insert): the event payloads carry no timestamp."
    )
    if r["db_host"] not in ("127.0.0.1", "localhost", "::1", "local socket"):
        say(f"  (the database is on {r['db_host']}: its clock may differ from this one)")
    say(
        "fan-out spread = receive time − the first subscriber's receive time of the same "
        "event (clock-independent)."
    )
    say(
        f"connect all {sizes.subscribers}: {fo['connect_s']:.2f} s; job {ff['job_s']:.1f} s "
        f"from first to last event, {ff['events']} events; "
        f"{ff['replayed']} (subscriber, event) deliveries were replays of events stored "
        "before the subscriber connected and are left out"
    )
    say(f"delivery, all:       n={ff['all']['n']}, p50/p90/p99/max {fmt(ff['all'])}")
    say(f"delivery, on A:      n={ff['a']['n']}, p50/p90/p99/max {fmt(ff['a'])}")
    say(f"delivery, on B:      n={ff['b']['n']}, p50/p90/p99/max {fmt(ff['b'])}")
    say(f"fan-out spread:      p50/p90/p99/max {fmt(ff['spread'])}")
    say(
        f"`done` received by {ff['done']}/{sizes.subscribers}; every event in order: "
        f"{ff['complete']}/{sizes.subscribers}; errors: {len(ff['errors'])} "
        f"{ff['errors'][:3] if ff['errors'] else ''}"
    )
    for n in ("a", "b"):
        say(
            f"RSS {n.upper()}: before {mb(fo['rss_before'][n])}, subscribers connected "
            f"{mb(fo['rss_connected'][n])}, peak {mb(fo['rss_peak'][n])}, "
            f"after {mb(fo['rss_after'][n])}"
        )

    say(
        f"\n## 4. slow subscribers: {sizes.slow} sockets that read nothing "
        f"({sizes.slow // 2} on A, {sizes.slow // 2} on B), and 10 normal ones"
    )
    say(
        f"a job of another instance (rows and events written with the service's SQL) emits "
        f"{sl['events']} events in {sl['emit_s']:.1f} s "
        f"({sl['events'] / sl['emit_s']:.0f}/s); both instances get them through NOTIFY; "
        f"the normal subscribers had all of them {sl['delivered_s']:.1f} s after the first "
        f"({sl['events'] / sl['delivered_s']:.0f}/s); subscribers seen: {sl['connected']}"
    )
    say(
        f"each stream {sl['bytes_per_stream'] / 1024:.0f} KB, "
        f"{mb(sl['bytes_per_stream'] * sizes.slow)} unread in all until "
        f"{sizes.slow_pause_s:g} s after the job ended"
    )
    say(
        f"subscribers switched to catch-up from the database (lagged): A {sl['lagged']['a']}, "
        f"B {sl['lagged']['b']}; normal subscribers with `done`: {sl['control_done']}/10"
    )
    say(
        "held in the kernel's socket send queues meanwhile: "
        + ", ".join(f"{n.upper()} {mb(q)} on {c} connections" for n, (c, q) in sl["kernel"].items())
    )
    wmem = tcp_wmem_max()
    say(
        "so the service's own bound (a queue of supervisor.subscriber_queue events per "
        "subscriber, then catch-up from the database) is reached only once a socket's send "
        "buffer is full"
        + (f" (net.ipv4.tcp_wmem allows up to {mb(wmem)} per socket)" if wmem else "")
    )
    say(f"every event, in order, through `done`: {sl['complete']}/{sizes.slow} slow streams")
    for n in ("a", "b"):
        say(
            f"RSS {n.upper()}: before {mb(sl['rss_before'][n])}, peak {mb(sl['rss_peak'][n])}, "
            f"stalled {mb(sl['rss_stalled'][n])}, after {mb(sl['rss_after'][n])}"
        )

    growth = max(sl["rss_peak"][n] - sl["rss_before"][n] for n in ("a", "b"))
    fan_growth = max(fo["rss_peak"][n] - fo["rss_before"][n] for n in ("a", "b"))
    say(
        f"\n## Load benchmark ({os.cpu_count()} cores, {r['where']}, "
        f"open files {nofile}; run took {runtime:.0f} s)"
    )
    say(f"machine: {r['machine']}\n")
    say("| measure | figure | target |")
    say("|---|---|---|")
    say(
        f"| settings GET, {sizes.settings_rate:g} req/s open loop × {sizes.settings_s:g} s, "
        f"{n_users} users, one instance | p50 {st['p50']:.1f} / p90 {st['p90']:.1f} / "
        f"p99 {st['p99']:.1f} / max {st['max']:.1f} ms, {sum(s.errors.values())} errors "
        f"in {st['n'] + sum(s.errors.values())} | p99 < 20 ms "
        f"{'✓' if st['p99'] < 20 and not s.errors else '✗'} |"
    )
    say(
        f"| generate → 202, {sizes.run_users} users at {sizes.command_rate:g}/s | "
        f"p50 {gs['p50']:.1f} / p99 {gs['p99']:.1f} ms, {sum(gen.errors.values())} errors | — |"
    )
    say(
        f"| proceed → 202 after a failure, {sizes.run_users} runs at {sizes.command_rate:g}/s | "
        f"p50 {ps['p50']:.1f} / p99 {ps['p99']:.1f} ms, {sum(pro.errors.values())} errors | — |"
    )
    say(
        f"| SSE delivery, {sizes.subscribers} subscribers on one job (½ local, ½ via NOTIFY) | "
        f"p50 {ff['all']['p50']:.1f} / p99 {ff['all']['p99']:.1f} / max "
        f"{ff['all']['max']:.1f} ms; `done` {ff['done']}/{sizes.subscribers} | p99 < 100 ms "
        f"{'✓' if ff['all']['p99'] < 100 and ff['done'] == sizes.subscribers else '✗'} |"
    )
    say(
        f"| RSS with {sizes.subscribers // 2} subscribers per instance | A "
        f"{mb(fo['rss_before']['a'])} → peak {mb(fo['rss_peak']['a'])}, B "
        f"{mb(fo['rss_before']['b'])} → peak {mb(fo['rss_peak']['b'])} "
        f"(+{mb(fan_growth)} at most) | — |"
    )
    say(
        f"| {sizes.slow} slow subscribers, {mb(sl['bytes_per_stream'] * sizes.slow)} unread | "
        f"RSS +{mb(growth)} at most; {sl['complete']}/{sizes.slow} streams complete after "
        f"catch-up | bounded, complete "
        f"{'✓' if sl['complete'] == sizes.slow and growth < 100 * 2**20 else '✗'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    logs.configure("warning", "console")
    nofile = raise_nofile()
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    psutil.cpu_percent()
    load_before = os.getloadavg()[0]
    results = asyncio.run(bench(sizes))
    results["machine"] = (
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
        f"all cores {psutil.cpu_percent():.0f}% busy during the run"
    )
    report(results, sizes, nofile, time.monotonic() - started)


if __name__ == "__main__":
    main()
