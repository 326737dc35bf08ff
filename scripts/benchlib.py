"""What the benchmarks share: a fresh migrated database, latency percentiles, the stand-in LLM
process, and starting and stopping processes (the client of a running instance and a free
loopback port are the tests' too: `deepmemory_service.testing.client`)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import yarl

from deepmemory_service.db import migrations
from deepmemory_service.db.embedded import EmbeddedPostgres
from deepmemory_service.testing.client import free_port

SYSTEM_PG = "postgresql://postgres@127.0.0.1:5432/test"


@asynccontextmanager
async def fresh_database(prefix: str) -> AsyncIterator[tuple[str, str]]:
    """(url, where): a database of our own, migrated, on the machine's PostgreSQL if it
    answers, else on an embedded one; dropped afterwards."""
    embedded, pg_dir = None, None
    try:
        admin = await asyncpg.connect(SYSTEM_PG, timeout=3)
        base, where = SYSTEM_PG, "fresh database on the machine's PostgreSQL"
    except (OSError, asyncpg.PostgresError):
        pg_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-pg-"))
        embedded = EmbeddedPostgres(pg_dir)
        base = await asyncio.to_thread(embedded.start)
        where = "fresh database on an embedded PostgreSQL"
        admin = await asyncpg.connect(base)
    name = f"{prefix.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    parsed = yarl.URL(base)
    # with_path drops the query, which carries pgserver's socket directory
    url = str(parsed.with_path(f"/{name}").with_query(parsed.query))
    try:
        await migrations.migrate_url(url)
        yield url, where
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if embedded:
            await asyncio.to_thread(embedded.stop)
        if pg_dir:
            shutil.rmtree(pg_dir, ignore_errors=True)


@asynccontextmanager
async def database(prefix: str) -> AsyncIterator[tuple[str, str]]:
    """(url, where): DEEPMEMORY_DATABASE_URL as is (migrated); else `fresh_database`."""
    configured = os.environ.get("DEEPMEMORY_DATABASE_URL")
    if configured:
        await migrations.migrate_url(configured)
        yield configured, "DEEPMEMORY_DATABASE_URL"
        return
    async with fresh_database(prefix) as found:
        yield found


# --------------------------------------------------------------------------- figures


def pct(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Latency:
    """Percentiles of some latencies, in milliseconds."""

    n: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Latency:
        ms = [s * 1000 for s in seconds]
        return cls(len(ms), pct(ms, 50), pct(ms, 90), pct(ms, 99), max(ms) if ms else math.nan)

    def __str__(self) -> str:
        return f"{self.p50:.1f} / {self.p90:.1f} / {self.p99:.1f} / {self.max:.1f} ms"


def mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB"


def say(text: str) -> None:
    print(text, flush=True)


def machine_load() -> Callable[[], str]:
    """Starts measuring the machine; the returned call describes the load since."""
    psutil.cpu_percent()
    before = os.getloadavg()[0]

    def since() -> str:
        return (
            f"load average {before:.1f} before, {os.getloadavg()[0]:.1f} after; "
            f"all cores {psutil.cpu_percent():.0f}% busy during the run"
        )

    return since


# --------------------------------------------------------------------------- processes


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


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-2000:] if log and log.exists() else ""


async def wait_http(
    url: str, proc: subprocess.Popen[bytes], what: str, log: Path | None = None
) -> None:
    """Until `url` answers 200; fails (with the log's tail) if `proc` exits first."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.poll() is not None:
                tail = await asyncio.to_thread(_tail, log)
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


def backend_env(
    home: Path, data_dir: Path, db_url: str, token: str, log_level: str = "warning"
) -> dict[str, str]:
    """The environment a benchmark's service process starts from (whole: nothing else is
    inherited, so a developer's DEEPMEMORY_* variables cannot change a figure); each
    benchmark adds its own settings."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "DEEPMEMORY_DATABASE_URL": db_url,
        "DEEPMEMORY_DATA_DIR": str(data_dir),
        "DEEPMEMORY_SERVICE_TOKEN": token,
        "DEEPMEMORY_LOG_LEVEL": log_level,
        "DEEPMEMORY_LOG_FORMAT": "console",
    }


async def start_backend(
    python: str,
    cwd: Path | None,
    port: int,
    env: dict[str, str],
    log: Path,
    what: str = "the service",
) -> subprocess.Popen[bytes]:
    """`python -m deepmemory_service serve --role backend` on 127.0.0.1:`port` with the
    environment `env` (whole: nothing is inherited), its stderr in `log`; returns once its
    /healthz answers (`what` names it if it dies first)."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                *(python, "-m", "deepmemory_service", "serve", "--role", "backend"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    await wait_http(f"http://127.0.0.1:{port}/healthz", proc, what, log)
    return proc


@dataclass(frozen=True)
class Standin:
    """The stand-in LLM, a separate process on loopback (`deepmemory_service.testing`)."""

    url: str

    async def configure(self, **config: Any) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.url}/_standin/config", json=config) as resp,
        ):
            assert resp.status == 200, await resp.text()

    async def reset(self) -> None:
        """Its counters from zero."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.url}/_standin/reset") as resp,
        ):
            assert resp.status == 200, await resp.text()

    async def stats(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}/_standin/stats") as resp,
        ):
            data: dict[str, Any] = await resp.json()
            return data


@asynccontextmanager
async def standin(**config: Any) -> AsyncIterator[Standin]:
    """A stand-in LLM process configured with `config`, stopped afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepmemory_service.testing.standin_llm", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    llm = Standin(f"http://127.0.0.1:{port}")
    try:
        await wait_http(f"{llm.url}/_standin/stats", proc, "the stand-in LLM")
        if config:
            await llm.configure(**config)
        yield llm
    finally:
        await asyncio.to_thread(stop_process, proc)
