"""Many users on one service: one user's load against another's calls through the gateway,
and a frozen database. Prints figures; not a test.

1. streams: user A holds `--streams` (300) event streams through the gateway on its own
   running job while user B makes 20 calls through the gateway (settings, runs, documents,
   search, estimate), five a second: each call's status and latency (target: every one
   200 in under 1 s), the same 20 calls straight to the backend for comparison, how A's
   streams were answered (200, 429, …), and, once A's clients have all gone, whether the
   service still opens backend streams for them (the backend's subscriber count, sampled)
   and how many tracebacks its log holds.
2. frozen: the benchmark's own PostgreSQL is stopped (SIGSTOP of the postmaster and every
   backend) for `--freeze-s` (30) seconds, once while the service is idle and once in the
   middle of a generation. Every second while it is frozen, `/healthz`, the settings and
   a search are asked (through the gateway, as a user would); each reply's status and time
   (target: each answered within 10 s, 503 and never 500). After SIGCONT: how soon each
   answers 200 again, and whether the run completes.

The service is one `serve` process (gateway and backend, as `scripts/serve` runs it) with
the stand-in LLM, on an embedded PostgreSQL the benchmark starts for itself (never the
machine's: it is frozen). `--service-root DIR` runs the service from another checkout
(another worktree, for a before/after on one machine): its `deepmemory_service` comes
first on the service's PYTHONPATH.

Usage: scripts/bench_fairness [--quick] [--only streams|frozen] [--service-root DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import jwt
import psutil
from benchlib import (  # scripts/, beside this file
    Latency,
    Standin,
    backend_env,
    free_port,
    machine_load,
    say,
    standin,
    stop_process,
    wait_http,
)

from deepmemory_service.db.embedded import EmbeddedPostgres

T = TypeVar("T")
TOKEN = "bench-fairness-token"
ADMIN = "bench-fairness-admin"
SECRET = "bench-fairness-secret-key-of-32-bytes-or-more"
BACKEND_AUTH = {"Authorization": f"Bearer {TOKEN}"}
# a call or a stream whose reply takes longer than this is counted as hung
CLIENT_TIMEOUT_S = 120.0
CALL_TARGET_S = 1.0
# how long the backend's streams of departed clients are watched
LEFT_S = 30.0
FROZEN_TARGET_S = 10.0


def user_token(user: uuid.UUID) -> dict[str, str]:
    """A user's bearer header, signed as `deepmemory-service token` signs one."""
    now = int(time.time())
    claims = {"sub": str(user), "aud": "deepmemory-service", "iat": now, "exp": now + 3600}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@dataclass(frozen=True)
class Sizes:
    streams: int = 300
    calls: int = 20
    call_rate: float = 5.0
    freeze_s: float = 30.0
    frozen_chunks: int = 400  # the mid-generation run's chunks
    frozen_latency_ms: float = 150.0  # per LLM call, 8 in flight: the run takes ~8 s unfrozen


FULL = Sizes()
QUICK = Sizes(freeze_s=10.0, frozen_chunks=200)


# --------------------------------------------------------------------------- the service


@dataclass
class Service:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    @property
    def backend(self) -> str:
        return f"{self.url}/v1/api"

    def tracebacks(self) -> int:
        return self.log.read_text(errors="replace").count("Traceback")

    def log_lines(self, needle: str) -> int:
        return sum(needle in line for line in self.log.read_text(errors="replace").splitlines())


@asynccontextmanager
async def service(
    workdir: Path, db_url: str, llm: Standin, root: Path | None, **extra: str
) -> AsyncIterator[Service]:
    port = free_port()
    env = {
        **backend_env(workdir, workdir / "data", db_url, TOKEN, log_level="info"),
        "DEEPMEMORY_ADMIN_TOKEN": ADMIN,
        "DEEPMEMORY_SECRET_KEY": SECRET,
        "DEEPMEMORY_GENERATOR": "llm",
        "DEEPMEMORY_LLM_BASE_URL": f"{llm.url}/v1",
        "DEEPMEMORY_LLM_TIMEOUT_S": "600",
        **extra,
    }
    if root is not None:
        env["PYTHONPATH"] = str(root)
    log = workdir / f"service-{port}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "deepmemory_service", "serve"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            env=env,
            cwd=str(root) if root is not None else None,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    svc = Service(f"http://127.0.0.1:{port}", proc, log)
    try:
        await wait_http(f"{svc.url}/healthz", proc, "the service", log)
        yield svc
    finally:
        await asyncio.to_thread(stop_process, proc)


def service_code(root: Path | None) -> str:
    """Where the service's package is loaded from, and the checkout's commit."""
    probe = (
        "import deepmemory_service, pathlib; "
        "print(pathlib.Path(deepmemory_service.__file__).parent)"
    )
    env = {**os.environ, **({"PYTHONPATH": str(root)} if root else {})}
    where = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=str(root) if root else None,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    git = shutil.which("git") or "git"
    commit = subprocess.run(
        [git, "-C", where, "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        [git, "-C", where, "status", "--porcelain", "--", "."],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{where} at {commit[:72]}{' (with uncommitted changes)' if dirty else ''}"


async def ingest(http: aiohttp.ClientSession, svc: Service, user: uuid.UUID, n: int) -> None:
    docs = [
        {
            "title": f"doc {i}",
            "text": f"Section {i}: component{i} talks to module{i % 97} through "
            f"queue{i % 13}; its timeout is {i % 60} seconds.",
        }
        for i in range(n)
    ]
    async with http.post(
        f"{svc.backend}/documents",
        json={"user_id": str(user), "documents": docs},
        headers=BACKEND_AUTH,
    ) as resp:
        assert resp.status == 201, await resp.text()


async def generate(http: aiohttp.ClientSession, svc: Service, user: uuid.UUID) -> dict[str, Any]:
    async with http.post(
        f"{svc.backend}/deep-memory/generate",
        json={"user_id": str(user), "regenerate": True},
        headers=BACKEND_AUTH,
    ) as resp:
        assert resp.status == 202, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def run_of(
    http: aiohttp.ClientSession, svc: Service, user: uuid.UUID, run_id: str
) -> dict[str, Any]:
    async with http.get(
        f"{svc.backend}/deep-memory/runs/{run_id}",
        params={"user_id": str(user)},
        headers=BACKEND_AUTH,
    ) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def subscribers(http: aiohttp.ClientSession, svc: Service) -> int:
    async with http.get(
        f"{svc.backend}/debug/supervisors", headers={**BACKEND_AUTH, "X-Admin-Token": ADMIN}
    ) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"debug/supervisors answered {resp.status}: {data}")
        return int(data["broadcaster"]["subscribers"])


async def poll(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], within: float = 120.0
) -> T:
    """`probe()` until `done` holds for its value (every 50 ms), at most `within` seconds."""
    deadline = time.monotonic() + within
    while not done(value := await probe()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"still not there after {within:g} s: {value!r:.300}")
        await asyncio.sleep(0.05)
    return value


# --------------------------------------------------------------------------- 1. streams


@dataclass
class Call:
    what: str
    status: int  # 0: no reply (the text says why)
    seconds: float
    error: str = ""


@dataclass
class Streams:
    held: Counter[str] = field(default_factory=Counter)  # A's streams by how they were answered
    unanswered: int = 0  # still without a reply when B's calls were done
    through_gateway: list[Call] = field(default_factory=list)
    direct: list[Call] = field(default_factory=list)
    backend_streams_at_hold: int = 0
    # once every A client has left: the backend's subscribers then, the most seen in the
    # LEFT_S after, and how soon none was left (None: not within LEFT_S)
    at_leaving: int = 0
    peak_after_leaving: int = 0
    gone_after_s: float | None = None
    tracebacks: int = 0
    retry_after: set[str] = field(default_factory=set)


def b_calls(base: str, user: uuid.UUID, *, backend: bool) -> list[tuple[str, str]]:
    """B's 20 calls: (what, url)."""
    who = f"user_id={user}&" if backend else ""
    search = f"{base}/search" if backend else f"{base}/deep-memory/search"
    kinds = [
        ("settings", f"{base}/deep-memory/settings?{who}"),
        ("runs", f"{base}/deep-memory/runs?{who}"),
        ("documents", f"{base}/documents?{who}"),
        ("search", f"{search}?{who}q=queue+timeout&k=5"),
        ("estimate", f"{base}/deep-memory/estimate?{who}"),
    ]
    return [kinds[i % len(kinds)] for i in range(20)]


async def timed_calls(
    http: aiohttp.ClientSession, calls: list[tuple[str, str]], headers: dict[str, str], rate: float
) -> list[Call]:
    """Each call at start + i/rate whatever the others do; each time from its start."""

    async def one(what: str, url: str, delay: float) -> Call:
        await asyncio.sleep(delay)
        started = time.monotonic()
        try:
            async with http.get(url, headers=headers) as resp:
                await resp.read()
                return Call(what, resp.status, time.monotonic() - started)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Call(what, 0, time.monotonic() - started, type(exc).__name__)

    return await asyncio.gather(*(one(what, url, i / rate) for i, (what, url) in enumerate(calls)))


async def bench_streams(
    http: aiohttp.ClientSession, svc: Service, llm: Standin, sizes: Sizes
) -> Streams:
    out = Streams()
    a, b = uuid.uuid4(), uuid.uuid4()
    await ingest(http, svc, a, 40)
    await ingest(http, svc, b, 40)
    # A's job runs for minutes: every LLM call is held
    await llm.configure(latency_ms=600_000, fail_after=None)
    accepted = await generate(http, svc, a)
    job = accepted["job_id"]
    url = f"{svc.api}/events/stream/{job}"
    a_headers = user_token(a)
    loop = asyncio.get_running_loop()
    answered: list[asyncio.Future[None]] = [loop.create_future() for _ in range(sizes.streams)]
    holders = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
    )
    stop = asyncio.Event()

    async def hold(done: asyncio.Future[None]) -> None:
        try:
            async with holders.get(url, headers=a_headers) as resp:
                out.held[str(resp.status)] += 1
                if "Retry-After" in resp.headers:
                    out.retry_after.add(resp.headers["Retry-After"])
                done.set_result(None)
                if resp.status == 200:
                    await stop.wait()
                else:
                    await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.held[type(exc).__name__] += 1
        finally:
            if not done.done():
                done.set_result(None)

    holding = [asyncio.create_task(hold(done)) for done in answered]
    # every stream answered, or 15 s for those that will not be
    await asyncio.wait(answered, timeout=15)
    out.backend_streams_at_hold = await subscribers(http, svc)
    say(f"   A holds: {dict(out.held)}; backend subscribers {out.backend_streams_at_hold}")
    b_headers = user_token(b)
    out.through_gateway = await timed_calls(
        http, b_calls(svc.api, b, backend=False), b_headers, sizes.call_rate
    )
    out.direct = await timed_calls(
        http, b_calls(svc.backend, b, backend=True), BACKEND_AUTH, sizes.call_rate
    )
    out.unanswered = sum(not f.done() for f in answered)
    # every A client leaves at once, the streams held and those still waiting alike
    stop.set()
    for task in holding:
        task.cancel()
    await asyncio.gather(*holding, return_exceptions=True)
    await holders.close()
    # a gateway that still opens streams for them shows them at the backend now (a backend
    # stream itself notices its client gone at its next ping, within 15 s)
    left = time.monotonic()
    out.at_leaving = await subscribers(http, svc)
    while (since := time.monotonic() - left) < LEFT_S:
        now = await subscribers(http, svc)
        out.peak_after_leaving = max(out.peak_after_leaving, now)
        if now == 0:
            out.gone_after_s = since
            break
        await asyncio.sleep(0.05)
    out.tracebacks = svc.tracebacks()
    async with http.post(
        f"{svc.backend}/deep-memory/cancel",
        json={"user_id": str(a), "training_run_id": accepted["training_run_id"]},
        headers=BACKEND_AUTH,
    ) as resp:
        await resp.read()
    return out


# --------------------------------------------------------------------------- 2. frozen


@dataclass
class Probe:
    what: str
    sent_s: float  # seconds into the freeze
    status: int
    seconds: float
    detail: str = ""


@dataclass
class Frozen:
    name: str
    freeze_s: float
    probes: list[Probe]
    recovered_s: dict[str, float]  # after SIGCONT: until each answers 200
    run_status: str = ""
    run_s: float = 0.0  # from SIGCONT until the run ended
    tracebacks: int = 0


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    return [postmaster, *postmaster.children(recursive=True)]


def freeze(pgdata: Path) -> list[psutil.Process]:
    """SIGSTOP to the postmaster first (it forks no more), then to every backend."""
    processes = postgres_processes(pgdata)
    processes[0].send_signal(signal.SIGSTOP)
    processes = postgres_processes(pgdata)
    for proc in processes[1:]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGSTOP)
    return processes


def thaw(processes: list[psutil.Process]) -> None:
    for proc in reversed(processes):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGCONT)


def probes(svc: Service, user: uuid.UUID) -> dict[str, tuple[str, dict[str, str]]]:
    headers = user_token(user)
    return {
        "healthz": (f"{svc.url}/healthz", {}),
        "settings": (f"{svc.api}/deep-memory/settings", headers),
        "search": (f"{svc.api}/deep-memory/search?q=queue+timeout&k=5", headers),
    }


async def ask(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, str]:
    async with http.get(url, headers=headers) as resp:
        text = await resp.text()
        return resp.status, text[:120]


async def bench_frozen(
    http: aiohttp.ClientSession,
    svc: Service,
    pgdata: Path,
    llm: Standin,
    sizes: Sizes,
    *,
    mid_run: bool,
) -> Frozen:
    user = uuid.uuid4()
    await ingest(http, svc, user, sizes.frozen_chunks if mid_run else 40)
    run_id = ""
    if mid_run:
        await llm.configure(latency_ms=sizes.frozen_latency_ms, fail_after=None)
        run_id = (await generate(http, svc, user))["training_run_id"]
        # frozen a fifth of the way through
        fifth = sizes.frozen_chunks // 5
        await poll(
            lambda: run_of(http, svc, user, run_id), lambda r: r["generated_chunks"] >= fifth
        )
    targets = probes(svc, user)
    results: list[Probe] = []

    async def probe(what: str, at: float) -> None:
        url, headers = targets[what]
        started = time.monotonic()
        try:
            status, text = await ask(http, url, headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, text = 0, type(exc).__name__
        results.append(Probe(what, at, status, time.monotonic() - started, text))

    frozen = freeze(pgdata)
    started = time.monotonic()
    tasks = []
    try:
        while (at := time.monotonic() - started) < sizes.freeze_s:
            tasks += [asyncio.create_task(probe(what, at)) for what in targets]
            await asyncio.sleep(1.0)
    finally:
        thaw(frozen)
    thawed = time.monotonic()
    recovered: dict[str, float] = {}

    async def recover(what: str) -> None:
        url, headers = targets[what]
        while time.monotonic() - thawed < 120:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                if (await ask(http, url, headers))[0] == 200:
                    recovered[what] = time.monotonic() - thawed
                    return
            await asyncio.sleep(0.1)

    await asyncio.gather(*(recover(what) for what in targets))
    await asyncio.gather(*tasks)
    out = Frozen("mid-generation" if mid_run else "idle", sizes.freeze_s, results, recovered)
    if mid_run:
        while time.monotonic() - thawed < 180:
            run = await run_of(http, svc, user, run_id)
            if run["status"] != "generating":
                break
            await asyncio.sleep(0.2)
        out.run_status = f"{run['status']} ({run['generated_chunks']}/{run['total_chunks']} chunks)"
        if run["error_message"]:
            out.run_status += f": {run['error_message']}"
        out.run_s = time.monotonic() - thawed
    out.tracebacks = svc.tracebacks()
    return out


# --------------------------------------------------------------------------- report


def call_table(calls: list[Call]) -> str:
    statuses = Counter(str(c.status or c.error) for c in calls)
    lat = Latency.of(c.seconds for c in calls)
    return f"statuses {dict(statuses)}; latency p50 / p90 / p99 / max {lat}"


def report_streams(s: Streams, sizes: Sizes) -> list[str]:
    say(f"\n### 1. {sizes.streams} streams of user A, 20 calls of user B")
    say(
        f"A's streams, as answered: {dict(s.held)}; "
        f"still unanswered when B was done: {s.unanswered}"
    )
    say(f"Retry-After on refused streams: {sorted(s.retry_after) or 'none'}")
    say(f"backend streams open while A held its streams: {s.backend_streams_at_hold}")
    gone = "never" if s.gone_after_s is None else f"{s.gone_after_s:.1f} s"
    say(f"B through the gateway: {call_table(s.through_gateway)}")
    say(f"B straight to the backend: {call_table(s.direct)}")
    for c in s.through_gateway:
        say(f"  {c.what:9} {c.status or c.error:>4} {c.seconds * 1000:9.1f} ms")
    say(
        f"backend streams when every A client had left: {s.at_leaving}, the most after: "
        f"{s.peak_after_leaving}, none left after: {gone}; tracebacks in the service's log: "
        f"{s.tracebacks}"
    )
    ok = [c.status == 200 for c in s.through_gateway]
    fine_after = (
        s.peak_after_leaving <= s.at_leaving and s.gone_after_s is not None and not s.tracebacks
    )
    worst = max(c.seconds for c in s.through_gateway)
    return [
        f"| B's {len(ok)} calls while A holds {sizes.streams} streams | {sum(ok)} × 200, "
        f"slowest {worst * 1000:.0f} ms | all 200, each < {CALL_TARGET_S:g} s "
        f"{'✓' if all(ok) and worst < CALL_TARGET_S else '✗'} |",
        f"| A's streams | {', '.join(f'{n} × {k}' for k, n in sorted(s.held.items()))}"
        f"{f', {s.unanswered} unanswered' if s.unanswered else ''} | at most the limit open, "
        f"429 beyond |",
        f"| after A's clients left | {s.at_leaving} backend streams, at most "
        f"{s.peak_after_leaving} after, none after {gone}; {s.tracebacks} tracebacks | none "
        f"opened, all gone, no traceback "
        f"{'✓' if fine_after else '✗'} |",
    ]


def report_frozen(f: Frozen) -> list[str]:
    say(f"\n### 2. database frozen {f.freeze_s:g} s, {f.name}")
    rows = []
    for what in ("healthz", "settings", "search"):
        mine = [p for p in f.probes if p.what == what]
        statuses = Counter(str(p.status) for p in mine)
        lat = Latency.of(p.seconds for p in mine)
        details = sorted({p.detail for p in mine if p.status != 200})
        say(f"{what}: {len(mine)} asked; statuses {dict(statuses)}; p50 / p90 / p99 / max {lat}")
        for d in details[:3]:
            say(f"   {d}")
        # answered before SIGCONT (those still waiting then are answered by the database)
        during = Counter(str(p.status) for p in mine if p.sent_s + p.seconds < f.freeze_s)
        say(f"   answered while still frozen: {dict(during)}")
        worst = max((p.seconds for p in mine), default=0.0)
        bad = sum(p.status in (0, 500) or p.seconds > FROZEN_TARGET_S for p in mine)
        bad += sum(n for status, n in during.items() if status != "503")
        rows.append(
            f"| {what}, frozen {f.freeze_s:g} s {f.name} | {len(mine)} asked: "
            f"{', '.join(f'{n} × {k}' for k, n in sorted(statuses.items()))} "
            f"({', '.join(f'{n} × {k}' for k, n in sorted(during.items())) or 'none'} while "
            f"frozen); slowest {worst:.1f} s; 200 again "
            f"{f.recovered_s.get(what, float('nan')):.1f} s after | "
            f"503 within {FROZEN_TARGET_S:g} s, no 500 {'✓' if not bad else '✗'} |"
        )
    if f.run_status:
        say(f"the run: {f.run_status}, {f.run_s:.1f} s after SIGCONT")
        rows.append(
            f"| the run frozen mid-generation | {f.run_status.split(' ')[0]} "
            f"{f.run_s:.1f} s after SIGCONT | completes "
            f"{'✓' if f.run_status.startswith('generated') else '✗'} |"
        )
    say(f"tracebacks in the service's log so far: {f.tracebacks}")
    return rows


# --------------------------------------------------------------------------- main


async def bench(sizes: Sizes, only: frozenset[str], root: Path | None) -> list[str]:
    workdir = Path(tempfile.mkdtemp(prefix="dm-bench-fairness-"))
    embedded = EmbeddedPostgres(workdir / "pg")
    rows: list[str] = []
    try:
        db_url = await asyncio.to_thread(embedded.start)
        async with (
            standin() as llm,
            service(workdir, db_url, llm, root, DEEPMEMORY_CONCURRENCY="8") as svc,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S),
            ) as http,
        ):
            say(f"service up at {svc.url}; stand-in LLM at {llm.url}")
            if "streams" in only:
                rows += report_streams(await bench_streams(http, svc, llm, sizes), sizes)
            if "frozen" in only:
                for mid_run in (False, True):
                    found = await bench_frozen(
                        http, svc, embedded.pgdata, llm, sizes, mid_run=mid_run
                    )
                    rows += report_frozen(found)
    finally:
        await asyncio.to_thread(embedded.stop)
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer streams, a 10 s freeze")
    parser.add_argument("--only", action="append", choices=("streams", "frozen"))
    parser.add_argument(
        "--service-root", type=Path, help="run the service from this checkout instead"
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    root = args.service_root.resolve() if args.service_root else None
    code = service_code(root)
    say(f"service code: {code}")
    load = machine_load()
    started = time.monotonic()
    rows = asyncio.run(bench(sizes, frozenset(args.only or ("streams", "frozen")), root))
    say(
        f"\n## Many users on one service ({os.cpu_count()} cores; run took "
        f"{time.monotonic() - started:.0f} s)\nservice code: {code}\nmachine: {load()}\n"
    )
    say("| measure | figure | target |")
    say("|---|---|---|")
    for row in rows:
        say(row)


if __name__ == "__main__":
    main()
