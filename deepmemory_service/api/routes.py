"""The backend's route table: every endpoint under /v1/api with its handler, request body,
replies and summary. `setup_routes` registers them; the OpenAPI document (`openapi.py`) and
the gateway's forwarding (`gateway/proxy.py`) are made from the same table."""

from __future__ import annotations

from aiohttp import web

from deepmemory_service.api import openapi, payloads, replies, search, sse, views
from deepmemory_service.api.endpoint import EVENT_STREAM, Endpoint, Param, Public, Reply
from deepmemory_service.api.keys import SETTINGS
from deepmemory_service.api.openapi import (
    NOT_FOUND,
    USER,
    UUID,
    error,
    json_reply,
    limit,
    ref,
    schema_of,
)
from deepmemory_service.models import TITLE_MAX_CHARS, EventName
from deepmemory_service.platform.config import Settings
from deepmemory_service.runs.estimates import Estimate
from deepmemory_service.storage.corpus import Added


def _questions_per_chunk(settings: Settings) -> int:
    return settings.generation.max_questions_per_chunk


# one event of a job's stream, as schemathesis reads it from the text/event-stream
SSE_EVENT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": schema_of(EventName),
        "data": {"type": "string"},
    },
}
RUN_ID = Param("run_id", "path", UUID)
ACCEPTED = json_reply(ref("JobAccepted"), "Accepted: the job's events stream at /events/stream")
SETTINGS_REPLY = json_reply(ref("Settings"), "The user's Deep Memory settings")
# the database's 503, and an s3:// store's: its bucket does not answer or refuses the service
STORE_UNAVAILABLE = error(
    "The database, or the bucket of an s3:// vector store, is unavailable (or this user's "
    "commands are queued full)",
    Retry_After="Seconds to wait before trying again",
)


async def openapi_json(request: web.Request) -> web.Response:
    """`GET /openapi.json`: the document of this table, with the configured bounds."""
    return web.json_response(openapi.document(ENDPOINTS, request.app[SETTINGS]))


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        "/deep-memory/generate",
        views.post_generate,
        "Start generating training pairs for the user's chunks",
        {
            "202": ACCEPTED,
            "400": error(
                "No chunks to generate from; or the body is not JSON, nested too deep, or "
                "cannot be decoded"
            ),
            "409": json_reply(ref("Blocked"), "An unfinished training run exists"),
        },
        body=payloads.GenerateIn,
        bounds=lambda s: {
            "questions_per_chunk": {"minimum": 1, "maximum": _questions_per_chunk(s)}
        },
        public=Public("/api/deep-memory/generate"),
    ),
    Endpoint(
        "POST",
        "/deep-memory/proceed",
        views.proceed,
        "Resume a failed run from the point of failure",
        {
            "202": ACCEPTED,
            "400": error("The run is not failed; or the body is not usable"),
            **NOT_FOUND,
        },
        body=payloads.ProceedIn,
        # the spec's proxy takes `{training_run_id}` and adds the user
        public=Public("/api/deep-memory/proceed", only=("training_run_id",)),
    ),
    Endpoint(
        "POST",
        "/deep-memory/cancel",
        views.cancel,
        "Stop a generating or training run, keeping its pairs",
        {
            "200": json_reply(ref("Cancelled"), "Stopped"),
            "202": json_reply(ref("Cancelled"), "Asked to stop; it stops shortly"),
            "400": error("The run is not generating or training; or the body is not usable"),
            **NOT_FOUND,
        },
        body=payloads.CancelIn,
        public=Public("/api/deep-memory/cancel", only=("training_run_id",)),
    ),
    Endpoint(
        "POST",
        "/deep-memory/train",
        views.post_train,
        "Train a generated run",
        {
            "202": ACCEPTED,
            "400": error("The run is not generated; or the body is not usable"),
            **NOT_FOUND,
        },
        body=payloads.TrainIn,
        public=Public("/api/deep-memory/train"),
    ),
    Endpoint(
        "GET",
        "/deep-memory/estimate",
        views.estimate,
        "What a generate would send to the LLM now: chunks, calls, tokens, cost",
        {"200": json_reply(schema_of(Estimate, reply=True), "The estimate")},
        params=(
            USER,
            Param(
                "questions_per_chunk",
                "query",
                {"type": "integer", "minimum": 1},
                required=False,
                most=_questions_per_chunk,
            ),
            Param("regenerate", "query", {"type": "boolean"}, required=False),
        ),
        public=Public("/api/deep-memory/estimate"),
    ),
    Endpoint(
        "GET",
        "/deep-memory/runs",
        views.list_runs,
        "The user's runs, newest first",
        {
            "200": json_reply(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["runs"],
                    "properties": {"runs": {"type": "array", "items": ref("Run")}},
                },
                "Runs",
            )
        },
        params=(USER, limit(500)),
        public=Public("/api/deep-memory/runs"),
    ),
    Endpoint(
        "GET",
        "/deep-memory/runs/{run_id}",
        views.get_run,
        "One run",
        {"200": json_reply(ref("Run"), "The run"), **NOT_FOUND},
        params=(RUN_ID, USER),
        public=Public("/api/deep-memory/runs/{runId}"),
    ),
    Endpoint(
        "DELETE",
        "/deep-memory/runs/{run_id}",
        views.delete_run,
        "Delete a failed run and its pairs",
        {
            "200": json_reply(schema_of(replies.Message, reply=True), "Deleted"),
            "400": error("The run is not failed"),
            **NOT_FOUND,
        },
        params=(RUN_ID, USER),
        public=Public("/api/deep-memory/runs/{runId}"),
    ),
    Endpoint(
        "GET",
        "/deep-memory/settings",
        views.get_settings,
        "Deep Memory settings",
        {"200": SETTINGS_REPLY},
        params=(USER,),
        public=Public("/api/deep-memory/settings"),
    ),
    Endpoint(
        "PUT",
        "/deep-memory/settings",
        views.put_settings,
        "Turn Deep Memory on or off",
        {"200": SETTINGS_REPLY, "409": error("The model may not be enabled")},
        body=payloads.SettingsIn,
        public=Public("/api/deep-memory/settings"),
    ),
    Endpoint(
        "POST",
        "/documents",
        views.add_documents,
        "Add documents: chunked, embedded and stored",
        {
            "201": json_reply(schema_of(Added, reply=True), "Stored"),
            "409": error("The vector store cannot take them as configured"),
            "429": error(
                "Too many uploads of this user in progress",
                Retry_After="Seconds to wait before trying again",
            ),
            "502": error("The embeddings API failed"),
            "503": STORE_UNAVAILABLE,
            "507": error("No space left for the vector store: nothing was stored"),
        },
        body=payloads.DocumentsIn,
        bounds=lambda s: {"documents": {"minItems": 1, "maxItems": s.uploads.max_documents}},
        public=Public("/api/documents"),
    ),
    Endpoint(
        "POST",
        "/documents/file",
        views.add_file,
        "Add a file as one document: its bytes, decoded with certainty, or refused saying why",
        {
            "201": json_reply(schema_of(replies.FileAdded, reply=True), "Stored, or unchanged"),
            "409": error("The vector store cannot take it as configured"),
            "429": error(
                "Too many uploads of this user in progress",
                Retry_After="Seconds to wait before trying again",
            ),
            "502": error("The embeddings API failed"),
            "507": error("No space left for the vector store: nothing was stored"),
        },
        params=(
            USER,
            Param(
                "name",
                "query",
                {"type": "string", "maxLength": TITLE_MAX_CHARS, "pattern": payloads.NOT_BLANK},
            ),
            Param("skip_unchanged", "query", {"type": "boolean"}, required=False),
        ),
        upload=True,
        public=Public("/api/documents/file"),
    ),
    Endpoint(
        "GET",
        "/documents",
        views.list_documents,
        "The user's documents, newest first",
        {"200": json_reply(schema_of(replies.DocumentsReply, reply=True), "Documents")},
        params=(USER, limit(1000)),
        public=Public("/api/documents"),
    ),
    Endpoint(
        "GET",
        "/search",
        search.search,
        "Top-k chunks, with or without the trained model",
        {
            "200": json_reply(schema_of(replies.SearchReply, reply=True), "Results, best first"),
            "409": error("No trained model, or a store made by another embedder"),
            "502": error("The embeddings API or Activeloop failed"),
            "503": STORE_UNAVAILABLE,
        },
        params=(
            USER,
            Param(
                "q", "query", {"type": "string", "maxLength": 2000, "pattern": payloads.NOT_BLANK}
            ),
            Param("k", "query", {"type": "integer", "minimum": 1, "maximum": 100}, required=False),
            Param("deep_memory", "query", {"type": "boolean"}, required=False),
        ),
        public=Public("/api/deep-memory/search"),
    ),
    Endpoint(
        "GET",
        "/events/stream/{job_id}",
        sse.stream,
        "A job's events (Server-Sent Events); Last-Event-ID replays later ones",
        {
            "200": Reply(
                "The event stream; each event's data is a JSON object",
                SSE_EVENT,
                content_type=EVENT_STREAM,
            ),
            "400": error("Last-Event-ID is not an event id"),
            "404": error("Job not found (or another user's)"),
        },
        params=(
            Param("job_id", "path", UUID),
            USER,
            Param(
                "Last-Event-ID",
                "header",
                {"type": "integer", "minimum": 0, "maximum": payloads.MAX_EVENT_ID},
                required=False,
            ),
        ),
        public=Public("/api/events/stream/{job_id}"),
    ),
    Endpoint(
        "GET",
        "/debug/supervisors",
        views.debug_supervisors,
        "Live supervisors (X-Admin-Token)",
        {
            "200": json_reply({"type": "object"}, "Snapshot"),
            "404": error("Debug is off (no admin token configured)"),
        },
        params=(Param("X-Admin-Token", "header", {"type": "string"}),),
        database=False,
    ),
    Endpoint(
        "GET",
        "/healthz",
        views.healthz,
        "Liveness and database readiness",
        {
            "200": json_reply(schema_of(replies.Health, reply=True), "Healthy"),
            "503": Reply(
                "The database is down, or did not answer within 1.5 s",
                schema_of(replies.Unhealthy, reply=True),
                headers={"Retry-After": "Seconds to wait before asking again"},
            ),
        },
        token=False,
    ),
    Endpoint(
        "GET",
        "/openapi.json",
        openapi_json,
        "This document",
        {"200": json_reply({"type": "object"}, "OpenAPI 3.0")},
        token=False,
        database=False,
    ),
)

# the backend paths a caller reaches without the service token
OPEN_PATHS = frozenset(f"/v1/api{e.path}" for e in ENDPOINTS if not e.token)


def setup_routes(app: web.Application) -> None:
    """Registers every endpoint of the table on the backend app."""
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.path, endpoint.handler)
