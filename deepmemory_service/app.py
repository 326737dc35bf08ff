"""The application factory: backend under /v1/api and, in role "all", the gateway beside it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import structlog
from aiohttp import web

from deepmemory_service import parts
from deepmemory_service.api import metrics_view, views
from deepmemory_service.api.keys import BACKEND, DRAIN, SERVICES, SETTINGS, SUPERVISORS
from deepmemory_service.api.middlewares import (
    common_headers,
    json_errors,
    request_context,
    service_auth,
)
from deepmemory_service.api.routes import setup_routes
from deepmemory_service.db import migrations
from deepmemory_service.db.database import CONNECTION_ERRORS, Database, Waits
from deepmemory_service.llm.generators import QuestionGenerator
from deepmemory_service.platform.config import Settings
from deepmemory_service.platform.metrics import RUN_COUNTS_TTL_S, Cached, Metrics
from deepmemory_service.platform.side_tasks import SideTasks
from deepmemory_service.runs import leases, listener
from deepmemory_service.runs.broadcaster import Broadcaster
from deepmemory_service.runs.events import JobEvents
from deepmemory_service.runs.services import Services
from deepmemory_service.runs.supervisor import RunSupervisor, SupervisorRegistry
from deepmemory_service.storage import cpu_pool
from deepmemory_service.storage.corpus import Corpora
from deepmemory_service.storage.embedders import Embedder
from deepmemory_service.storage.object_store import ObjectStore
from deepmemory_service.storage.search_cache import SearchCache
from deepmemory_service.storage.store import StoreRegistry
from deepmemory_service.storage.upload_gate import UploadGate
from deepmemory_service.training.trainer import Trainer

log = structlog.get_logger(__name__)
# how long the shutdown may spend failing this instance's runs
RELEASE_S = 10.0


@attrs.frozen
class Overrides:
    """Implementations to use instead of the configured parts (tests, benchmarks)."""

    generator: QuestionGenerator | None = None
    embedder: Embedder | None = None
    trainer: Trainer | None = None


@attrs.define
class Backend:
    svc: Services
    supervisors: SupervisorRegistry
    drained: bool = False

    async def drain(self) -> None:
        """Stops the work, fails this instance's running runs (subscribers see `failed`),
        then ends the open streams. Idempotent."""
        if self.drained:
            return
        self.drained = True
        await self.supervisors.stop()
        try:
            # a database that does not answer (or a pool held by work left running) must not
            # hold up the exit: the leases then run out, and the sweepers fail the runs
            async with asyncio.timeout(RELEASE_S):
                released = await leases.release_all(self.svc)
            if released:
                log.info("runs released at shutdown", runs=len(released))
        except Exception:
            log.exception("could not release runs at shutdown")
        self.svc.broadcaster.close_all()


@asynccontextmanager
async def open_backend(
    settings: Settings, overrides: Overrides, *, background: bool = True
) -> AsyncIterator[Backend]:
    """Database, parts and supervisors; with `background`, the lease and event side tasks."""
    await migrations.migrate_url(settings.database.url)
    bounds = settings.database
    # two pools: a run's work waits an outage out on its connections, and a request that
    # gives up (cutting its connection) never leaves the work to reconnect to a server
    # that does not answer; neither's load takes the other's connections
    db = await Database.connect(bounds.url, min_size=bounds.pool_min, max_size=bounds.pool_max)
    try:
        pool = await Database.connect(
            bounds.url, min_size=bounds.pool_min, max_size=bounds.pool_max
        )
    except BaseException:
        await db.close()
        raise
    request_db = pool.bounded(
        Waits(bounds.acquire_timeout_s, bounds.statement_timeout_s, bounds.lock_wait_s)
    )
    broadcaster = Broadcaster(settings.supervisor.subscriber_queue)
    embedder = overrides.embedder or parts.build_embedder(settings)
    corpora = Corpora(
        db=db,
        stores=StoreRegistry(
            settings.store_path,
            embedder.name,
            embedder.dimension,
            settings.activeloop.token or None,
            ObjectStore(settings.store) if settings.store_kind == "s3" else None,
            SearchCache(
                settings.search.memory_budget_bytes,
                settings.search.compact_above,
                settings.search.threads,
            ),
        ),
        embedder=embedder,
        uploads=UploadGate(settings.uploads.per_user),
        chunking=settings.store,
        limits=settings.uploads,
    )
    svc = Services(
        settings=settings,
        corpora=corpora,
        request_corpora=attrs.evolve(corpora, db=request_db),
        broadcaster=broadcaster,
        events=JobEvents(db, broadcaster, settings.instance_id),
        generator=overrides.generator or parts.build_generator(settings),
        trainer=overrides.trainer or parts.build_trainer(settings),
        metrics=Metrics(
            Cached(lambda: request_db.read(lambda c: c.run_counts()), RUN_COUNTS_TTL_S)
        ),
        budget=parts.build_budget(settings, db),
    )

    def subscribers_for(sup: RunSupervisor) -> int:
        return broadcaster.subscribers_of({sup.work.job_id}) if sup.work else 0

    supervisors = SupervisorRegistry(
        settings.supervisor.idle_s, settings.supervisor.inbox_size, subscribers_for
    )
    side = SideTasks()
    if background:
        cpu_pool.warm()
        await leases.sweep_once(svc)
        side.start(
            "lease-heartbeat",
            lambda: leases.heartbeat(svc, supervisors.working_runs, supervisors.cancel_run),
        )
        side.start("lease-sweeper", lambda: leases.sweeper(svc, supervisors.working_runs))
        side.start(
            "event-listener",
            lambda: listener.listen(svc, supervisors.cancel_run),
            restart_after_s=0.5,
            expected=CONNECTION_ERRORS,
        )
    backend = Backend(svc, supervisors)
    try:
        yield backend
    finally:
        await backend.drain()
        await side.stop()
        for part in (svc.generator, svc.embedder, svc.trainer, svc.budget):
            await part.aclose()
        await request_db.close()
        await db.close()


def _resources(overrides: Overrides) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_backend(app[SETTINGS], overrides) as backend:
            svc = backend.svc
            app[SERVICES] = svc
            app[SUPERVISORS] = backend.supervisors
            app[DRAIN] = backend.drain
            log.info("backend ready", instance_id=svc.instance_id)
            yield

    return ctx


async def _drain(app: web.Application) -> None:
    # on_shutdown runs before the runner waits for open handlers: SSE streams end now
    if DRAIN in app:
        await app[DRAIN]()


def create_backend(settings: Settings, overrides: Overrides) -> web.Application:
    app = web.Application(middlewares=[service_auth])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources(overrides))
    app.on_shutdown.append(_drain)
    setup_routes(app)
    return app


def complete_secrets(settings: Settings) -> Settings:
    """One-process mode may run without configured tokens: random ones live with the process."""
    return attrs.evolve(
        settings,
        service_token=settings.service_token or secrets.token_urlsafe(32),
        secret_key=settings.secret_key or secrets.token_urlsafe(32),
    )


def create_app(settings: Settings, overrides: Overrides | None = None) -> web.Application:
    settings = complete_secrets(settings)
    role = settings.http.role
    if role in ("all", "backend") and not settings.database.url:
        raise ValueError("settings.database.url must be resolved before create_app")
    app = web.Application(
        middlewares=[request_context, json_errors],
        client_max_size=settings.http.max_body_bytes,
        # bodies are decoded by payloads.read_body, which answers a bad one with a JSON 4xx;
        # aiohttp's parser would answer an encoding it lacks (br, zstd) in plain text
        handler_args={"auto_decompress": False},
    )
    app[SETTINGS] = settings
    app.on_response_prepare.append(common_headers)
    if role in ("all", "backend"):
        backend = create_backend(settings, overrides or Overrides())
        app.add_subapp("/v1/api", backend)
        app[BACKEND] = backend
        app.router.add_get("/metrics", metrics_view.metrics_handler(backend))
        app.router.add_get("/healthz", views.root_healthz(backend))
    if role in ("all", "gateway"):
        from deepmemory_service.gateway.proxy import setup_gateway

        setup_gateway(app)
    return app
