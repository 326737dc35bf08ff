"""Backend routes under /v1/api: thin handlers that parse, ask the user's supervisor, reply."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import structlog
from aiohttp import web

from deepmemory_service.api.keys import SERVICES, SETTINGS, SUPERVISORS
from deepmemory_service.api.payloads import (
    CancelIn,
    DocumentsIn,
    GenerateIn,
    ProceedIn,
    SettingsIn,
    TrainIn,
    clean_text,
    path_uuid,
    query_bool,
    query_int,
    query_uuid,
    read_json,
    read_json_object,
    read_upload,
    structure,
)
from deepmemory_service.api.replies import (
    Cancelled,
    DocumentsReply,
    FileAdded,
    Health,
    Message,
    Unhealthy,
    database_trouble,
    run_json,
    to_json,
)
from deepmemory_service.db.database import UNAVAILABLE, Conn
from deepmemory_service.errors import InvalidInput, NotFound, Unauthorized, run_not_found
from deepmemory_service.llm.budget_report import budget_view
from deepmemory_service.llm.usage import Prices
from deepmemory_service.models import TITLE_MAX_CHARS, JobAccepted, Run
from deepmemory_service.runs import commands, estimates, settings
from deepmemory_service.runs.services import Services
from deepmemory_service.runs.supervisor import RunSupervisor
from deepmemory_service.storage import documents
from deepmemory_service.storage.documents import DocumentText
from deepmemory_service.text import decoding

P = ParamSpec("P")
T = TypeVar("T")
log = structlog.get_logger(__name__)
# the health check answers within this, whatever the database does
HEALTH_S = 1.5


def _reply(value: Any, status: int = 200) -> web.Response:
    return web.json_response(to_json(value), status=status)


def _accepted(accepted: JobAccepted) -> web.Response:
    return _reply(accepted, 202)


def _bind(**values: str) -> None:
    structlog.contextvars.bind_contextvars(**values)


async def _ask(
    request: web.Request,
    user_id: uuid.UUID,
    name: str,
    command: Callable[Concatenate[Services, RunSupervisor, P], Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`command(svc, sup, ...)` run by the user's supervisor, one at a time with the
    user's other commands."""
    svc = request.app[SERVICES]

    async def handle(sup: RunSupervisor) -> T:
        return await command(svc, sup, *args, **kwargs)

    return await request.app[SUPERVISORS].ask(user_id, name, handle)


async def post_generate(request: web.Request) -> web.Response:
    body = await read_json(request, GenerateIn)
    _bind(user_id=str(body.user_id))
    return _accepted(
        await _ask(
            request,
            body.user_id,
            "generate",
            commands.new_run,
            body.questions_per_chunk,
            body.auto_train,
            body.regenerate,
        )
    )


async def proceed(request: web.Request) -> web.Response:
    body = await read_json(request, ProceedIn)
    _bind(user_id=str(body.user_id), run_id=str(body.training_run_id))
    return _accepted(
        await _ask(request, body.user_id, "proceed", commands.proceed, body.training_run_id)
    )


async def post_train(request: web.Request) -> web.Response:
    body = await read_json(request, TrainIn)
    _bind(user_id=str(body.user_id), run_id=str(body.training_run_id))
    return _accepted(
        await _ask(request, body.user_id, "train", commands.train_generated, body.training_run_id)
    )


async def cancel(request: web.Request) -> web.Response:
    """Stops a running run: 200 once it stopped (its status and message), 202 if it has not
    yet within a few seconds (it will)."""
    body = await read_json(request, CancelIn)
    _bind(user_id=str(body.user_id), run_id=str(body.training_run_id))
    done = await _ask(request, body.user_id, "cancel", commands.cancel, body.training_run_id)
    return _reply(Cancelled(done.run_id, done.status, done.message), 200 if done.stopped else 202)


async def delete_run(request: web.Request) -> web.Response:
    user_id = query_uuid(request, "user_id")
    run_id = path_uuid(request, "run_id")
    _bind(user_id=str(user_id), run_id=str(run_id))
    message = await _ask(request, user_id, "delete", commands.delete, run_id)
    return _reply(Message(message))


async def estimate(request: web.Request) -> web.Response:
    """What a generate would send to the LLM now (chunks, calls, tokens, cost)."""
    user_id = query_uuid(request, "user_id")
    gen = request.app[SETTINGS].generation
    qpc = query_int(
        request, "questions_per_chunk", gen.questions_per_chunk, 1, gen.max_questions_per_chunk
    )
    regenerate = query_bool(request, "regenerate") or False
    return _reply(await estimates.estimate(request.app[SERVICES], user_id, qpc, regenerate))


async def list_runs(request: web.Request) -> web.Response:
    user_id = query_uuid(request, "user_id")
    limit = query_int(request, "limit", 50, 1, 500)
    listing = await request.app[SERVICES].request_db.read(
        lambda conn: conn.list_runs(user_id, limit)
    )
    prices = Prices.of(request.app[SETTINGS].llm)
    return web.json_response({"runs": [run_json(r.run, r.latest_job_id, prices) for r in listing]})


async def get_run(request: web.Request) -> web.Response:
    user_id = query_uuid(request, "user_id")
    run_id = path_uuid(request, "run_id")

    async def read(conn: Conn) -> tuple[Run | None, uuid.UUID | None]:
        run = await conn.get_run(run_id, user_id)
        return run, (await conn.latest_job_id(run.id) if run else None)

    run, latest = await request.app[SERVICES].request_db.read(read)
    if run is None:
        raise run_not_found()
    return web.json_response(run_json(run, latest, Prices.of(request.app[SETTINGS].llm)))


async def get_settings(request: web.Request) -> web.Response:
    user_id = query_uuid(request, "user_id")
    return _reply(await settings.read(request.app[SERVICES], user_id))


async def put_settings(request: web.Request) -> web.Response:
    body = await read_json(request, SettingsIn)
    _bind(user_id=str(body.user_id))
    await _ask(request, body.user_id, "settings", settings.set_enabled, body.enabled)
    return _reply(await settings.read(request.app[SERVICES], body.user_id))


async def add_documents(request: web.Request) -> web.Response:
    svc = request.app[SERVICES]
    data = await read_json_object(request)
    claimed = data.get("user_id")
    if isinstance(claimed, str):
        # a user already at their bound is refused before a large body is validated
        with contextlib.suppress(ValueError):
            svc.uploads.check(uuid.UUID(claimed))
    body = structure(data, DocumentsIn)
    _bind(user_id=str(body.user_id))
    texts = [DocumentText(d.text, d.title) for d in body.documents]
    result = await documents.ingest(
        svc.request_corpora, body.user_id, texts, skip_unchanged=body.skip_unchanged
    )
    return _reply(result, 201)


async def add_file(request: web.Request) -> web.Response:
    """A file's bytes as one document titled with its name: decoded with certainty
    (`text.decoding`, as the command line's `ingest` decodes a file) or refused with a 422
    saying why, never stored with characters the file does not hold."""
    svc = request.app[SERVICES]
    user_id = query_uuid(request, "user_id")
    name = request.query.get("name", "")
    if not name.strip():
        raise InvalidInput("name: field required")
    if len(name) > TITLE_MAX_CHARS:
        # the name becomes the document's title
        raise InvalidInput(f"name: at most {TITLE_MAX_CHARS} characters, got {len(name)}")
    try:
        clean_text(name)
    except ValueError as exc:
        raise InvalidInput(f"name: {exc}") from None
    skip_unchanged = query_bool(request, "skip_unchanged") or False
    _bind(user_id=str(user_id))
    # a user already at their bound is refused before a large body is read
    svc.uploads.check(user_id)
    data = await read_upload(request, svc.settings.uploads.max_file_bytes)
    if not data:
        raise InvalidInput("body: the file is empty")
    try:
        # a legacy encoding is weighed in Python: off the event loop
        decoded = await asyncio.get_running_loop().run_in_executor(None, decoding.decode, data)
    except decoding.NotText as exc:
        raise InvalidInput(f"body: not text: {exc}") from None
    if not decoded.text.strip():
        raise InvalidInput("body: the file holds only white space")
    result = await documents.ingest(
        svc.request_corpora,
        user_id,
        [DocumentText(decoded.text, name)],
        skip_unchanged=skip_unchanged,
    )
    added = FileAdded(
        title=name,
        encoding=decoded.encoding,
        chunks=result.chunks,
        total_chunks=result.total_chunks,
        unchanged=bool(result.skipped),
        document_id=result.document_ids[0] if result.document_ids else None,
    )
    return _reply(added, 201)


async def list_documents(request: web.Request) -> web.Response:
    user_id = query_uuid(request, "user_id")
    limit = query_int(request, "limit", 100, 1, 1000)
    svc = request.app[SERVICES]

    async def read(conn: Conn) -> DocumentsReply:
        return DocumentsReply(
            await conn.list_documents(user_id, limit),
            await conn.document_count(user_id),
            await conn.total_chunks(user_id),
            svc.settings.http.max_body_bytes,
            svc.settings.uploads.max_file_bytes,
        )

    return _reply(await svc.request_db.read(read))


async def debug_supervisors(request: web.Request) -> web.Response:
    admin = request.app[SETTINGS].admin_token
    given = request.headers.get("X-Admin-Token", "")
    if not admin:
        raise NotFound("Not found")
    if not hmac.compare_digest(given.encode(), admin.encode()):
        raise Unauthorized("Admin token required in the X-Admin-Token header")
    svc = request.app[SERVICES]
    snapshot = request.app[SUPERVISORS].snapshot()
    snapshot["broadcaster"] = {
        "subscribers": svc.broadcaster.subscriber_count,
        "published": svc.broadcaster.published,
        "lagged": svc.broadcaster.lagged,
    }
    snapshot["instance_id"] = svc.instance_id
    snapshot["llm_budget"] = budget_view(svc.budget)
    snapshot["uploads"] = svc.uploads.snapshot()
    snapshot["search_cache"] = svc.stores.search.stats().as_json()
    return web.json_response(snapshot)


async def health(svc: Services) -> web.Response:
    """200 once the database answers; 503 saying why within `HEALTH_S` when it does not (a
    probe's own timeout is often a second or two, and a hung probe tells nothing)."""
    try:
        await svc.request_db.ping(HEALTH_S)
    except UNAVAILABLE as exc:
        log.warning("health check: database unavailable", error=str(exc) or type(exc).__name__)
        return web.json_response(
            to_json(Unhealthy("unavailable", database_trouble(exc))),
            status=503,
            headers={"Retry-After": "1"},
        )
    return _reply(Health("ok"))


async def healthz(request: web.Request) -> web.Response:
    return await health(request.app[SERVICES])


def root_healthz(backend: web.Application) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`GET /healthz` at the root, where probes and people look first: the backend's check."""

    async def handler(_request: web.Request) -> web.Response:
        return await health(backend[SERVICES])

    return handler
