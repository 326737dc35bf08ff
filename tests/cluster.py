"""Real `serve` processes on one fresh database, for the tests that kill, stop or starve
them: the `cluster` fixture, each instance an `Api` to call (a pytest plugin of conftest)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import psutil
import pytest

from deepmemory_service.testing.client import Api, free_port
from deepmemory_service.testing.standin_llm import StandinConfig, create_standin_app

TOKEN = "instances-service-token"


@attrs.define(kw_only=True)
class Instance(Api):
    """A `serve` process, called through its API (`call`, `run`, `until`)."""

    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the instance's log (stderr), for a failure message."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stacks(self) -> str:
        """Ends a hung instance with SIGABRT, on which it prints every thread's Python stack
        (PYTHONFAULTHANDLER), and returns its log's end with them: where it hung."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self.kill()
        return self.log_tail(20_000)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
async def cluster(
    fresh_db: Callable[..., Awaitable[str]], template_db: str, tmp_path: Path, aiohttp_server: Any
) -> AsyncIterator[Any]:
    """`start(**env)` launches a backend process on a shared fresh database (`env`: more
    settings, `DEEPMEMORY_LLM_RPM="60"` say); `wrapper` is a command it runs under, `port`
    the port it listens on (a restart on the port of a stopped one), and `ready` the path
    that answers 200 once it serves (a gateway alone has no healthz). All are killed after."""
    db_url = await fresh_db(template_db)
    standin = await aiohttp_server(create_standin_app(StandinConfig(latency_ms=15)))
    started: list[Instance] = []

    async def start(
        wrapper: Sequence[str] = (),
        port: int | None = None,
        ready: str = "/v1/api/healthz",
        **env: str,
    ) -> Instance:
        port = port or free_port()
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "DEEPMEMORY_DATABASE_URL": db_url,
            "DEEPMEMORY_DATA_DIR": str(tmp_path / "data"),
            "DEEPMEMORY_SERVICE_TOKEN": TOKEN,
            "DEEPMEMORY_HTTP_ROLE": "backend",
            "DEEPMEMORY_GENERATOR": "llm",
            "DEEPMEMORY_LLM_BASE_URL": str(standin.make_url("/v1")),
            "DEEPMEMORY_LLM_BACKOFF_BASE_S": "0.01",
            "DEEPMEMORY_CONCURRENCY": "4",
            "DEEPMEMORY_LEASE_TTL_S": "1.0",
            "DEEPMEMORY_LEASE_HEARTBEAT_S": "0.2",
            "DEEPMEMORY_LEASE_SWEEP_S": "0.2",
            "DEEPMEMORY_LOG_LEVEL": "warning",
            # a hung instance can say where: SIGABRT prints its stacks (Instance.stacks)
            "PYTHONFAULTHANDLER": "1",
            **env,
        }
        log = tmp_path / f"instance-{len(started)}.log"
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [
                    *wrapper,
                    sys.executable,
                    *("-m", "deepmemory_service", "serve"),
                    *("--host", "127.0.0.1", "--port", str(port)),
                ],
                env=environ,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        instance = Instance(url=f"http://127.0.0.1:{port}", token=TOKEN, proc=proc, log=log)
        started.append(instance)
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert proc.poll() is None, (
                    f"the service exited during start-up\n{instance.log_tail()}"
                )
                try:
                    async with http.get(f"{instance.url}{ready}") as resp:
                        if resp.status == 200:
                            return instance
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "the service did not start"
                await asyncio.sleep(0.05)

    try:
        yield start, db_url, standin
    finally:
        for instance in started:
            instance.kill()


def signal_while_writing(root: Path, pid: int, sig: int, until: Callable[[], bool]) -> bool:
    """Sends `sig` to process `pid`'s group while it, or a process it started (the upload
    worker), holds a file under `root` open for writing (polling their /proc fd tables);
    False if none does before `until()` holds."""
    prefix = str(root) + "/"
    parent = psutil.Process(pid)
    while not until():
        family = [pid]
        with contextlib.suppress(psutil.Error):
            family += [p.pid for p in parent.children(recursive=True)]
        for member in family:
            fds = Path(f"/proc/{member}/fd")
            with contextlib.suppress(OSError):
                for fd in os.listdir(fds):
                    with contextlib.suppress(OSError):
                        if not os.readlink(fds / fd).startswith(prefix):
                            continue
                        info = (fds.parent / "fdinfo" / fd).read_text()
                        if int(info.split("flags:")[1].split()[0], 8) & os.O_ACCMODE:
                            os.killpg(pid, sig)
                            return True
    return False


async def ingest(instance: Instance, user: uuid.UUID, n: int) -> None:
    docs = [
        {"text": f"Chunk {i} covers component{i} and its link to module{i % 7}."} for i in range(n)
    ]
    code, body = await instance.call(
        "POST", "/documents", json={"user_id": str(user), "documents": docs}
    )
    assert code == 201, body


async def read_events(
    instance: Instance, user: uuid.UUID, job_id: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """A job's SSE stream until the server ends it: (id, event, data) per event."""
    events, fields = [], {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{instance.url}/v1/api/events/stream/{job_id}",
            params={"user_id": str(user)},
            headers={"Authorization": f"Bearer {instance.token}"},
        ) as resp,
    ):
        assert resp.status == 200
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if "data" in fields:
                    events.append((fields["id"], fields["event"], json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.strip()
    return events
