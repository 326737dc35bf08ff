"""The embedded PostgreSQL: a slow start waited for, a crashed handle forgotten, a server that
dies under a running service restarted (or the service stopped, non-zero)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import attrs
import pgserver._commands as pgserver_commands
import pgserver.postgres_server as pgserver_module
import psutil
import pytest
from structlog.testing import capture_logs

from deepmemory_service.db.embedded import EmbeddedPostgres
from deepmemory_service.testing.client import free_port, poll


def slow_pg_ctl_start(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """`pg_ctl start` as on a loaded machine: the server is launched, and pg_ctl's fixed
    wait runs out before it is ready. Returns the starts made, as they are made."""
    real_pg_ctl = pgserver_commands.pg_ctl
    starts: list[list[str]] = []

    def slow_machine(args: list[str], **kwargs: Any) -> Any:
        if args[-1] != "start":
            return real_pg_ctl(args, **kwargs)
        starts.append(args)
        real_pg_ctl([a for a in args if a != "-w"], **kwargs)
        raise subprocess.TimeoutExpired("pg_ctl", kwargs.get("timeout", 10))

    monkeypatch.setattr(pgserver_module, "pg_ctl", slow_machine)
    return starts


async def test_a_server_slower_than_pg_ctls_timeout_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = slow_pg_ctl_start(monkeypatch)
    embedded = EmbeddedPostgres(tmp_path)
    with capture_logs() as logs:
        url = embedded.start()
    try:
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        # pg_ctl ran once: the second look found the server it had started, now ready
        assert len(starts) == 1
        assert [e["event"] for e in logs] == [
            "embedded postgres slow to start; still waiting",
            "embedded postgres ready",
        ]
    finally:
        embedded.stop()
    # stopped with the last handle, as without the slow start
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()


async def test_a_restart_slower_than_pg_ctls_timeout_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded = EmbeddedPostgres(tmp_path)
    url = embedded.start()
    try:
        dead = _postmaster_pid(tmp_path / "postgres")
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        # gone, not a zombie yet to be reaped (a restart meanwhile is tried again, as the
        # test of the service's watchdog below sees)
        await poll(
            lambda: asyncio.to_thread(psutil.pid_exists, dead),
            lambda there: not there,
            lambda _: "the killed server is still there",
        )
        # the crash recovery outlasts pg_ctl's fixed wait
        starts = slow_pg_ctl_start(monkeypatch)
        assert await asyncio.to_thread(embedded.restart) == url
        assert len(starts) == 1, "pg_ctl start ran again instead of waiting"
        assert embedded.alive()
        assert _postmaster_pid(tmp_path / "postgres") != dead
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        embedded.stop()
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _running(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


HOLD_A_HANDLE = """
import sys, time
from pathlib import Path
from deepmemory_service.db.embedded import EmbeddedPostgres
EmbeddedPostgres(Path(sys.argv[1])).start()
print("ready", flush=True)
time.sleep(600)
"""


def test_a_clean_stop_after_a_crash_still_stops_the_server(tmp_path: Path) -> None:
    """pgserver counts one handle per process in .handle_pids.json and stops the server with
    the last: a process killed with -9 left its pid there, and no later stop stopped it."""
    crashed = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_HANDLE, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    pid = None
    try:
        assert crashed.stdout is not None
        for line in crashed.stdout:  # its log lines come first
            if line.strip() == "ready":
                break
        pid = _postmaster_pid(tmp_path / "postgres")
        crashed.kill()
        crashed.wait()
        assert _running(pid), "the server went down with the process that started it"

        later = EmbeddedPostgres(tmp_path)
        later.start()
        assert _postmaster_pid(tmp_path / "postgres") == pid, "a second server was started"
        later.stop()
        assert not _running(pid), "the clean stop left the server running"
    finally:
        crashed.kill()
        crashed.wait()
        if _running(pid):
            assert pid is not None
            os.kill(pid, signal.SIGKILL)


@attrs.define
class Service:
    """`deepmemory-service serve` on the embedded PostgreSQL of its own data directory."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    pgdata: Path

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    async def status(self, path: str) -> int | None:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"{self.url}/v1/api{path}",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp,
            ):
                return resp.status
        except (aiohttp.ClientError, TimeoutError):
            return None


TOKEN = "embedded-test-token"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DEEPMEMORY_")},
        "DEEPMEMORY_DATA_DIR": str(tmp_path / "data"),
        "DEEPMEMORY_SERVICE_TOKEN": TOKEN,
        "DEEPMEMORY_LOG_FORMAT": "json",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepmemory_service", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    svc = Service(proc, f"http://127.0.0.1:{port}", log, tmp_path / "data" / "postgres")
    try:
        await poll(
            lambda: svc.status("/healthz"),
            lambda code: code == 200 or proc.poll() is not None,
            lambda _: "the service did not start",
            within=120,
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        yield svc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        pid = _postmaster_pid(svc.pgdata)
        if _running(pid):
            assert pid is not None
            os.kill(pid, signal.SIGKILL)


async def test_an_embedded_server_that_dies_is_restarted_in_one_log_line(
    service: Service,
) -> None:
    user = uuid.uuid4()
    assert await service.status(f"/deep-memory/settings?user_id={user}") == 200
    first = _postmaster_pid(service.pgdata)
    assert _running(first)
    seen = len(service.lines())
    logged = service.log.stat().st_size
    assert first is not None
    os.kill(first, signal.SIGKILL)

    restarted = "embedded postgres died; restarted it"
    await poll(
        lambda: service.status(f"/deep-memory/settings?user_id={user}"),
        lambda code: code == 200 and _postmaster_pid(service.pgdata) != first,
        lambda code: f"the service did not come back (settings: {code})",
        within=60,
    )
    # the watchdog logs once the restart it waits for has returned: a request can be
    # answered by the new server a moment before that line is written
    await poll(
        lambda: asyncio.to_thread(lambda: [line["event"] for line in service.lines()[seen:]]),
        lambda events: restarted in events,
        lambda events: f"no restart logged: {events}",
        within=30,
    )
    assert _running(_postmaster_pid(service.pgdata))
    after = service.lines()[seen:]
    events = [line["event"] for line in after]
    assert events.count(restarted) == 1, events
    assert not [line for line in after if "exception" in line], "tracebacks in the logs"
    with service.log.open("rb") as log:
        log.seek(logged)
        assert b"Traceback" not in log.read(), "tracebacks in the logs"

    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(60) == 0
    assert not _running(_postmaster_pid(service.pgdata))


async def test_a_server_that_cannot_come_back_stops_the_service_non_zero(
    service: Service,
) -> None:
    pid = _postmaster_pid(service.pgdata)
    seen = len(service.lines())
    # its data directory gone: no start can succeed
    service.pgdata.rename(service.pgdata.with_name("moved"))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    code = await asyncio.wait_for(asyncio.to_thread(service.proc.wait), 60)
    assert code == 1
    after = service.lines()[seen:]
    (gave_up,) = [line for line in after if line["event"].startswith("embedded postgres died")]
    assert gave_up["event"] == (
        "embedded postgres died and could not be restarted; stopping the service (exit "
        "status 1) so that its supervisor starts it afresh"
    )
    assert gave_up["level"] == "error"
    assert gave_up["tries"] == 5
