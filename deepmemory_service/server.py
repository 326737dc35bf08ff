"""`serve`: resolve the database (embedded PostgreSQL when none is configured), run the app."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
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
def database(settings: Settings) -> Iterator[Settings]:
    """Settings with a database URL: the configured one, or the embedded server's."""
    if settings.database.url or settings.http.role == "gateway":
        yield settings
        return
    embedded = EmbeddedPostgres(settings.data_path)
    url = embedded.start()
    try:
        yield attrs.evolve(settings, database=attrs.evolve(settings.database, url=url))
    finally:
        embedded.stop()


def serve(settings: Settings, *, on_ready: object = None) -> None:
    with database(settings) as resolved:
        app = create_app(resolved)
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
