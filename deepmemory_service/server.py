"""`serve`: resolve the database (embedded PostgreSQL when none is configured), run the app."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import attrs
import structlog
from aiohttp import web

from deepmemory_service import deeplake_compat
from deepmemory_service.app import create_app
from deepmemory_service.config import Settings
from deepmemory_service.embedded_pg import EmbeddedPostgres

log = structlog.get_logger(__name__)

# how long a graceful shutdown may take before connections are dropped
SHUTDOWN_S = 10.0


@contextmanager
def _resolved(settings: Settings) -> Iterator[tuple[Settings, EmbeddedPostgres | None]]:
    if settings.database.url or settings.http.role == "gateway":
        yield settings, None
        return
    embedded = EmbeddedPostgres(settings.data_path)
    url = embedded.start()
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


def serve(settings: Settings, *, on_ready: object = None) -> int:
    """Runs until stopped; the exit status: 1 when the embedded PostgreSQL died for good."""
    with _resolved(settings) as (resolved, embedded):
        app = create_app(resolved)
        watchdog = _Watchdog(embedded) if embedded is not None else None
        if watchdog is not None:
            app.cleanup_ctx.append(watchdog.ctx)
        if callable(on_ready):
            app.on_startup.append(on_ready)
        host, port = resolved.http.host, resolved.http.port
        if resolved.http.role != "gateway":
            deeplake_compat.load()
        # deeplake and its dependencies leave a large heap of long-lived objects; out of the
        # collector's sight they no longer make full collections long (measured: 85-140 ms
        # pauses in request latency before, the settings p99)
        gc.collect()
        gc.freeze()
        log.info(
            "serving",
            host=host,
            port=port,
            role=resolved.http.role,
            embedded_db=not settings.database.url,
        )
        web.run_app(
            app,
            host=host,
            port=port,
            shutdown_timeout=SHUTDOWN_S,
            print=None,
            access_log=None,
            handle_signals=True,
            loop=asyncio.new_event_loop(),
        )
    return 1 if watchdog is not None and watchdog.gave_up else 0
