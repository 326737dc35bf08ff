"""`serve`: resolve the database (embedded PostgreSQL when none is configured), check that the
vector stores' bucket can be used (s3:// stores), run the app."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import attrs
import structlog
from aiohttp import web

from deepmemory_service.api.protocol import JsonErrorsRunner
from deepmemory_service.app import create_app
from deepmemory_service.db.database import DatabaseUnreachable, redacted
from deepmemory_service.db.embedded import EmbeddedPostgres
from deepmemory_service.platform.config import Settings
from deepmemory_service.storage import deeplake_compat

log = structlog.get_logger(__name__)

# how long a graceful shutdown may take before connections are dropped
SHUTDOWN_S = 10.0


@contextmanager
def _resolved(settings: Settings) -> Iterator[tuple[Settings, EmbeddedPostgres | None]]:
    if settings.database.url or settings.http.role == "gateway":
        yield settings, None
        return
    embedded = EmbeddedPostgres(settings.data_path)
    try:
        url = embedded.start()
    except (OSError, subprocess.SubprocessError) as exc:
        raise DatabaseUnreachable(
            f"cannot start the embedded PostgreSQL in {embedded.pgdata}: {exc}; check that "
            "the data directory (DEEPMEMORY_DATA_DIR) is writable, or set DEEPMEMORY_DATABASE_URL"
        ) from exc
    try:
        yield attrs.evolve(settings, database=attrs.evolve(settings.database, url=url)), embedded
    finally:
        embedded.stop()


@contextmanager
def database(settings: Settings) -> Iterator[Settings]:
    """Settings with a database URL: the configured one, or the embedded server's."""
    with _resolved(settings) as (resolved, _):
        yield resolved


@attrs.define
class _Watchdog:
    """Looks after the embedded server for as long as the app runs; when it cannot be
    restarted, stops the service the way a SIGTERM does, to exit with status 1."""

    embedded: EmbeddedPostgres
    gave_up: bool = False

    def give_up(self) -> None:
        self.gave_up = True
        os.kill(os.getpid(), signal.SIGTERM)

    async def ctx(self, _app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.embedded.watch(self.give_up), name="embedded-postgres")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class PortUnavailable(Exception):
    """The service cannot listen where it was told to; the message says why and what to do."""


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of `host`, made before anything starts or is
    announced: a port in use is one clear line, not a crash after the login link."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortUnavailable(f"cannot listen on {host}: {exc.strerror}; check --host") from None
    sockets: list[socket.socket] = []
    bound: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in addresses:
            if (family, address) in bound:
                continue
            bound.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # "::" and "0.0.0.0" side by side, as asyncio's own server does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        where = f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise PortUnavailable(
                f"port {port} is already in use on {host}: stop what is listening there, "
                "or choose another port with --port"
            ) from None
        if exc.errno == errno.EACCES:
            raise PortUnavailable(
                f"not allowed to listen on {where}: choose a port above 1023 with --port"
            ) from None
        raise PortUnavailable(f"cannot listen on {where}: {exc.strerror}") from None
    return sockets


def check_stores(settings: Settings) -> None:
    """An s3:// store path's bucket with no credentials to use it, or one that refuses them
    or is not there, stops start-up (ConfigError: one line naming what to set); one that
    does not answer now is logged, and tried again per request."""
    if settings.http.role == "gateway" or settings.store_kind != "s3":
        return
    from deepmemory_service.storage.object_store import ObjectStore, split

    bucket = split(settings.store.path)[0]
    method = ObjectStore(settings.store).check(bucket)
    log.info("vector stores in a bucket", bucket=bucket, credentials_from=method)


def serve(settings: Settings, *, on_ready: object = None) -> int:
    """Runs until stopped; the exit status: 1 when the embedded PostgreSQL died for good.
    The port is taken first: one in use is PortUnavailable before anything starts."""
    sockets = listen(settings.http.host, settings.http.port)
    try:
        return _serve(settings, sockets, on_ready)
    finally:
        for sock in sockets:
            sock.close()


def _serve(settings: Settings, sockets: list[socket.socket], on_ready: object) -> int:
    check_stores(settings)
    with _resolved(settings) as (resolved, embedded):
        app = create_app(resolved)
        watchdog = _Watchdog(embedded) if embedded is not None else None
        if watchdog is not None:
            app.cleanup_ctx.append(watchdog.ctx)
        if callable(on_ready):
            app.on_startup.append(on_ready)
        if resolved.http.role != "gateway":
            deeplake_compat.load()
        # deeplake and its dependencies leave a large heap of long-lived objects; out of the
        # collector's sight they no longer make full collections long (measured: 85-140 ms
        # pauses in request latency before, the settings p99)
        gc.collect()
        gc.freeze()
        log.info(
            "serving",
            host=settings.http.host,
            port=settings.http.port,
            role=resolved.http.role,
            data_dir=settings.data_dir,
            database=describe_database(settings),
        )
        run_app(app, sockets)
    return 1 if watchdog is not None and watchdog.gave_up else 0


async def _until_stopped(app: web.Application, sockets: list[socket.socket]) -> None:
    runner = JsonErrorsRunner(
        app, handle_signals=True, access_log=None, shutdown_timeout=SHUTDOWN_S
    )
    await runner.setup()
    try:
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        # until SIGINT or SIGTERM: the runner's handlers raise GracefulExit here
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run_app(app: web.Application, sockets: list[socket.socket]) -> None:
    """`web.run_app` on `sockets`, step for step, but with `JsonErrorsRunner`: aiohttp's
    own replies to requests it cannot parse are then JSON like every other 4xx."""
    loop = asyncio.new_event_loop()
    main = loop.create_task(_until_stopped(app, sockets))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancels what is left running, as asyncio.run does, reporting what failed."""
    left = asyncio.all_tasks(loop)
    for task in left:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    for task in left:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


def describe_database(settings: Settings) -> str:
    """Which database a command uses, for a person (never with a password)."""
    if settings.http.role == "gateway":
        return "none (a gateway forwards to its backend)"
    if not settings.database.url:
        return f"the embedded PostgreSQL in {settings.data_path / 'postgres'}"
    return redacted(settings.database.url)
