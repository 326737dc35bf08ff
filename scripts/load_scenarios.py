"""The load benchmark's scenarios, each returning its figures as a value (printed by
`load_report.py`)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from benchlib import Latency, Standin  # scripts/, beside this file
from load_cluster import Instance, debug, ingest, wait_runs
from load_probes import (
    Outcome,
    Producer,
    RssSampler,
    SseClient,
    event_times,
    kernel_send_queue,
    open_loop,
    subscribe,
)


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
    upload_streams: int = 12  # one user's uploads in flight, back to back
    upload_documents: int = 1000  # small documents per upload
    upload_s: float = 10.0  # how long other users' settings are measured meanwhile
    upload_rate: float = 100.0  # their settings GETs per second


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
    upload_streams=4,
    upload_documents=300,
    upload_s=3.0,
)


@dataclass(frozen=True)
class Commands:
    generate: Outcome
    proceed: Outcome
    failed_s: float  # from the last generate's reply to every run failed
    generated_s: float  # from the last proceed's reply to every run generated


@dataclass(frozen=True)
class Rss:
    """Resident memory of each instance by name: before, at the scenario's high point (its
    subscribers connected, or stalled), the peak sampled, and after."""

    before: dict[str, int]
    loaded: dict[str, int]
    peak: dict[str, int]
    after: dict[str, int]

    def growth(self) -> int:
        return max(self.peak[n] - self.before[n] for n in self.before)


@dataclass(frozen=True)
class Fanout:
    every: Latency  # delivery latency of every (subscriber, live event)
    on_a: Latency
    on_b: Latency
    spread: Latency  # receive time minus the first subscriber's, per event
    done: int
    errors: list[str]
    events: int
    replayed: int
    job_s: float
    complete: int
    connect_s: float
    rss: Rss


@dataclass(frozen=True)
class Slow:
    events: int
    emit_s: float
    delivered_s: float
    connected: dict[str, int]
    bytes_per_stream: float
    complete: int
    control_done: int
    rss: Rss
    kernel: dict[str, tuple[int, int]]
    lagged: dict[str, int]


@dataclass(frozen=True)
class Uploads:
    """Other users' settings GETs while one user uploads as fast as it can, and the same
    requests just before, without the uploads."""

    quiet: Outcome
    busy: Outcome
    replies: dict[int, int]  # the uploads' HTTP statuses, counted
    uploaded_chunks: int
    upload: Latency  # each accepted upload, request to reply


# --------------------------------------------------------------------------- 1. settings


class SettingsLoad:
    """`GET /deep-memory/settings` of users picked at random, at an open-loop `rate` (after a
    second at that rate to open connections and warm caches and plans)."""

    def __init__(
        self, http: aiohttp.ClientSession, inst: Instance, users: list[uuid.UUID], n: int, seed: int
    ) -> None:
        rng = random.Random(seed)
        self.http, self.n = http, n
        self.url = f"{inst.api}/deep-memory/settings"
        self.picks = [rng.choice(users) for _ in range(n)]

    async def request(self, i: int) -> tuple[int, Any]:
        async with self.http.get(self.url, params={"user_id": str(self.picks[i % self.n])}) as r:
            return r.status, await r.read()

    @staticmethod
    def check(status: int, _body: Any) -> str | None:
        return None if status == 200 else f"HTTP {status}"

    async def warm(self, rate: float) -> None:
        await open_loop(int(rate), rate, self.request, self.check)

    async def measure(self, rate: float) -> Outcome:
        out, _ = await open_loop(self.n, rate, self.request, self.check)
        return out


async def bench_settings(
    http: aiohttp.ClientSession, inst: Instance, users: list[uuid.UUID], sizes: Sizes
) -> Outcome:
    load = SettingsLoad(http, inst, users, int(sizes.settings_rate * sizes.settings_s), seed=7)
    await load.warm(sizes.settings_rate)
    return await load.measure(sizes.settings_rate)


# --------------------------------------------------------------------------- 2. commands


async def bench_commands(
    http: aiohttp.ClientSession,
    pair: list[Instance],
    users: list[uuid.UUID],
    db_url: str,
    llm: Standin,
    sizes: Sizes,
) -> Commands:
    # every LLM call fails with a 500: the runs fail within ~two calls
    await llm.configure(latency_ms=0, fail_after=0)
    await llm.reset()

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
    await llm.configure(fail_after=None)
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
    return Commands(gen, pro, failed_s, generated_s)


# --------------------------------------------------------------------------- 3. fan-out


async def bench_fanout(
    http: aiohttp.ClientSession, a: Instance, b: Instance, db_url: str, llm: Standin, sizes: Sizes
) -> Fanout:
    user = uuid.uuid4()
    await ingest(http, a, user, sizes.fanout_chunks)
    await asyncio.sleep(0.5)
    rss_before = {i.name: i.rss() for i in (a, b)}
    # the first wave of LLM calls is held while the subscribers connect
    await llm.configure(latency_ms=sizes.hold_ms, fail_after=None)
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
        await llm.configure(latency_ms=sizes.fanout_latency_ms)
        rss_connected = {i.name: i.rss() for i in (a, b)}
        await asyncio.wait_for(asyncio.gather(*(s.closed for s in subs)), 180)
    await asyncio.sleep(1.0)
    rss_after = {i.name: i.rss() for i in (a, b)}
    stored = await event_times(db_url, job_id)
    return fanout_figures(
        subs,
        stored,
        connect_s,
        Rss(rss_before, rss_connected, dict(sampler.peak), rss_after),
    )


def fanout_figures(
    subs: list[SseClient], stored: dict[int, tuple[str, float]], connect_s: float, rss: Rss
) -> Fanout:
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
    return Fanout(
        every=Latency.of(every),
        on_a=Latency.of(by_instance["a"]),
        on_b=Latency.of(by_instance["b"]),
        spread=Latency.of(spread),
        done=done,
        errors=errors,
        events=len(stored),
        replayed=replayed,
        job_s=max(times) - min(times) if times else 0.0,
        complete=complete,
        connect_s=connect_s,
        rss=rss,
    )


# --------------------------------------------------------------------------- 4. slow subscribers


async def bench_slow(
    http: aiohttp.ClientSession, a: Instance, b: Instance, db_url: str, sizes: Sizes
) -> Slow:
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
        connected = {i.name: (await debug(http, i)).subscribers for i in pair}
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
    return Slow(
        events=len(stored),
        emit_s=emit_s,
        delivered_s=delivered_s,
        connected=connected,
        bytes_per_stream=sum(sizes_read) / max(1, len(sizes_read)),
        complete=complete,
        control_done=sum(1 for s in control if (ev := s.events()[1]) and ev[-1][1] == "done"),
        rss=Rss(rss_before, rss_stalled, dict(sampler.peak), rss_after),
        kernel=kernel,
        lagged={n: stats_stalled[n].lagged - stats_before[n].lagged for n in stats_before},
    )


# --------------------------------------------------------------------------- 5. one user's uploads


async def bench_uploads(
    http: aiohttp.ClientSession, inst: Instance, others: list[uuid.UUID], sizes: Sizes
) -> Uploads:
    """One user keeps `upload_streams` uploads of `upload_documents` small documents in
    flight on one instance (waiting out a 429's Retry-After); other users' settings GETs
    at an open-loop rate, first without the uploads, then during them."""
    load = SettingsLoad(http, inst, others, int(sizes.upload_rate * sizes.upload_s), seed=11)
    await load.warm(sizes.upload_rate)
    quiet = await load.measure(sizes.upload_rate)

    hog = uuid.uuid4()
    replies: dict[int, int] = {}
    took: list[float] = []
    chunks = 0
    stop = asyncio.Event()

    async def uploads(stream: int) -> None:
        nonlocal chunks
        k = 0
        while not stop.is_set():
            docs = [
                {"title": f"s{stream} u{k} d{d}", "text": f"Note {d} of upload {k}: item{d}."}
                for d in range(sizes.upload_documents)
            ]
            k += 1
            started = time.monotonic()
            async with http.post(
                f"{inst.api}/documents", json={"user_id": str(hog), "documents": docs}
            ) as resp:
                await resp.read()
                replies[resp.status] = replies.get(resp.status, 0) + 1
                if resp.status == 201:
                    took.append(time.monotonic() - started)
                    chunks += sizes.upload_documents
                elif resp.status == 429:
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))

    streams = [asyncio.create_task(uploads(s)) for s in range(sizes.upload_streams)]
    await asyncio.sleep(1.0)  # the uploads under way
    busy = await load.measure(sizes.upload_rate)
    stop.set()
    await asyncio.gather(*streams)
    return Uploads(quiet, busy, replies, chunks, Latency.of(took))
