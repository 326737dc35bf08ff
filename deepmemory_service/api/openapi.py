"""`GET /v1/api/openapi.json`: the backend described in OpenAPI 3.0.

Every body in it, asked for or answered, is the schema of the attrs class the service reads
or writes it with (`payloads.py` for requests, `replies.py` and the domain's values for
replies), so a field cannot be added to one and not the other. Replies allow no fields
beyond theirs, and every status a route can answer is listed: the schemathesis test checks
the live service's replies against this document, not only their status class.
"""

from __future__ import annotations

import enum
import types
import typing
import uuid
from datetime import datetime
from typing import Any

import attrs
from aiohttp import web

from deepmemory_service import __version__
from deepmemory_service.api import payloads, replies
from deepmemory_service.api.keys import SETTINGS
from deepmemory_service.models import EventName, JobAccepted, Run
from deepmemory_service.runs.estimates import Estimate
from deepmemory_service.storage.corpus import Added

routes = web.RouteTableDef()


def schema_of(
    tp: Any,
    *,
    reply: bool = False,
    hide: frozenset[str] = frozenset(),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON schema of a type the service reads or writes: attrs classes, UUIDs,
    datetimes, enums and literals, scalars, lists, mappings and optionals.

    In a request a field with a default may be left out; in a `reply` only one whose default
    is None is (`replies.to_json`). `hide` leaves fields out, `extra` adds some."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return {**schema_of(inner, reply=reply), "nullable": True}
    if origin is list:
        return {"type": "array", "items": schema_of(typing.get_args(tp)[0], reply=reply)}
    if origin is dict:
        return {"type": "object"}
    if origin is typing.Literal:
        return {"type": "string", "enum": list(typing.get_args(tp))}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if attrs.has(tp):
        hints = typing.get_type_hints(tp)
        fields = [f for f in attrs.fields(tp) if f.name not in hide]
        properties = {f.name: schema_of(hints[f.name], reply=reply) for f in fields}
        required = [
            f.name
            for f in fields
            if f.default is attrs.NOTHING or (reply and f.default is not None)
        ]
        for name, extra_tp in (extra or {}).items():
            properties[name] = schema_of(extra_tp, reply=reply)
            required.append(name)
        return {
            "type": "object",
            "additionalProperties": False,
            "required": required,
            "properties": properties,
        }
    if tp is payloads.Text:
        return {"type": "string", "pattern": payloads.NOT_BLANK}
    simple: dict[Any, dict[str, Any]] = {
        uuid.UUID: {"type": "string", "format": "uuid"},
        datetime: {"type": "string", "format": "date-time"},
        int: {"type": "integer"},
        float: {"type": "number"},
        bool: {"type": "boolean"},
        str: {"type": "string"},
    }
    return dict(simple[tp])


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, **headers: str) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        reply["headers"] = {
            name.replace("_", "-"): {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return reply


def _error(description: str, **headers: str) -> dict[str, Any]:
    return _json(_ref("Error"), description, **headers)


def _param(name: str, where: str, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema}


UUID = schema_of(uuid.UUID)
USER = _param("user_id", "query", UUID)


def _limit(most: int) -> dict[str, Any]:
    """How many of a listing to return (newest first)."""
    return _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": most}, False)


# what any route behind the service token may answer besides its own replies
AUTH = {"401": _error("Missing or invalid service token")}
DATABASE = {
    "503": _error(
        "The database is unavailable, or this user's commands are queued full",
        Retry_After="Seconds to wait before trying again (when the database is unavailable)",
    )
}
QUERY = {"422": _error("A parameter is missing or invalid; the detail names it")}
BODY = {
    "400": _error("The body is not JSON, nested too deep, or cannot be decoded"),
    "413": _error("The body is larger than the limit (before or after decoding)"),
    "415": _error(
        "The body's Content-Encoding is not supported",
        Accept_Encoding="The encodings accepted",
    ),
    "422": _error("A field is missing or invalid; the detail names it"),
}
NOT_FOUND = {"404": _error("Training run not found (or another user's)")}


def _op(
    summary: str,
    replies_: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: type | None = None,
    body_overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    responses = {**AUTH, **DATABASE, **(QUERY if params else {}), **(BODY if body else {})}
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **replies_}}
    if params:
        op["parameters"] = params
    if body is not None:
        schema = schema_of(body)
        for name, extra in (body_overrides or {}).items():
            schema["properties"][name] = {**schema["properties"][name], **extra}
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return op


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


def document(max_questions: int, max_documents: int) -> dict[str, Any]:
    """The backend's OpenAPI document; the bounds a request is held to are the configured
    ones (questions per chunk, documents per upload)."""
    run_id = _param("run_id", "path", UUID)
    accepted = _json(_ref("JobAccepted"), "Accepted: the job's events stream at /events/stream")
    settings = _json(_ref("Settings"), "The user's Deep Memory settings")
    return {
        "openapi": "3.0.3",
        "info": {"title": "deepmemory-service backend", "version": __version__},
        "servers": [{"url": "/v1/api"}],
        "security": [{"serviceToken": []}],
        "paths": {
            "/deep-memory/generate": {
                "post": _op(
                    "Start generating training pairs for the user's chunks",
                    {
                        "202": accepted,
                        "400": _error(
                            "No chunks to generate from; or the body is not JSON, nested too "
                            "deep, or cannot be decoded"
                        ),
                        "409": _json(_ref("Blocked"), "An unfinished training run exists"),
                    },
                    body=payloads.GenerateIn,
                    body_overrides={
                        "questions_per_chunk": {"minimum": 1, "maximum": max_questions}
                    },
                )
            },
            "/deep-memory/proceed": {
                "post": _op(
                    "Resume a failed run from the point of failure",
                    {
                        "202": accepted,
                        "400": _error("The run is not failed; or the body is not usable"),
                        **NOT_FOUND,
                    },
                    body=payloads.ProceedIn,
                )
            },
            "/deep-memory/cancel": {
                "post": _op(
                    "Stop a generating or training run, keeping its pairs",
                    {
                        "200": _json(_ref("Cancelled"), "Stopped"),
                        "202": _json(_ref("Cancelled"), "Asked to stop; it stops shortly"),
                        "400": _error(
                            "The run is not generating or training; or the body is not usable"
                        ),
                        **NOT_FOUND,
                    },
                    body=payloads.CancelIn,
                )
            },
            "/deep-memory/train": {
                "post": _op(
                    "Train a generated run",
                    {
                        "202": accepted,
                        "400": _error("The run is not generated; or the body is not usable"),
                        **NOT_FOUND,
                    },
                    body=payloads.TrainIn,
                )
            },
            "/deep-memory/estimate": {
                "get": _op(
                    "What a generate would send to the LLM now: chunks, calls, tokens, cost",
                    {"200": _json(schema_of(Estimate, reply=True), "The estimate")},
                    params=[
                        USER,
                        _param(
                            "questions_per_chunk",
                            "query",
                            {"type": "integer", "minimum": 1, "maximum": max_questions},
                            required=False,
                        ),
                        _param("regenerate", "query", {"type": "boolean"}, required=False),
                    ],
                )
            },
            "/deep-memory/runs": {
                "get": _op(
                    "The user's runs, newest first",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["runs"],
                                "properties": {"runs": {"type": "array", "items": _ref("Run")}},
                            },
                            "Runs",
                        )
                    },
                    params=[USER, _limit(500)],
                )
            },
            "/deep-memory/runs/{run_id}": {
                "get": _op(
                    "One run",
                    {"200": _json(_ref("Run"), "The run"), **NOT_FOUND},
                    params=[run_id, USER],
                ),
                "delete": _op(
                    "Delete a failed run and its pairs",
                    {
                        "200": _json(schema_of(replies.Message, reply=True), "Deleted"),
                        "400": _error("The run is not failed"),
                        **NOT_FOUND,
                    },
                    params=[run_id, USER],
                ),
            },
            "/deep-memory/settings": {
                "get": _op("Deep Memory settings", {"200": settings}, params=[USER]),
                "put": _op(
                    "Turn Deep Memory on or off",
                    {"200": settings, "409": _error("The model may not be enabled")},
                    body=payloads.SettingsIn,
                ),
            },
            "/documents": {
                "post": _op(
                    "Add documents: chunked, embedded and stored",
                    {
                        "201": _json(schema_of(Added, reply=True), "Stored"),
                        "409": _error("The vector store cannot take them as configured"),
                        "429": _error(
                            "Too many uploads of this user in progress",
                            Retry_After="Seconds to wait before trying again",
                        ),
                        "502": _error("The embeddings API failed"),
                        "507": _error("No space left for the vector store: nothing was stored"),
                    },
                    body=payloads.DocumentsIn,
                    body_overrides={"documents": {"minItems": 1, "maxItems": max_documents}},
                ),
                "get": _op(
                    "The user's documents, newest first",
                    {"200": _json(schema_of(replies.DocumentsReply, reply=True), "Documents")},
                    params=[USER, _limit(1000)],
                ),
            },
            "/search": {
                "get": _op(
                    "Top-k chunks, with or without the trained model",
                    {
                        "200": _json(
                            schema_of(replies.SearchReply, reply=True), "Results, best first"
                        ),
                        "409": _error("No trained model, or a store made by another embedder"),
                        "502": _error("The embeddings API or Activeloop failed"),
                    },
                    params=[
                        USER,
                        _param(
                            "q",
                            "query",
                            {"type": "string", "maxLength": 2000, "pattern": payloads.NOT_BLANK},
                        ),
                        _param(
                            "k",
                            "query",
                            {"type": "integer", "minimum": 1, "maximum": 100},
                            required=False,
                        ),
                        _param("deep_memory", "query", {"type": "boolean"}, required=False),
                    ],
                )
            },
            "/events/stream/{job_id}": {
                "get": _op(
                    "A job's events (Server-Sent Events); Last-Event-ID replays later ones",
                    {
                        "200": {
                            "description": "The event stream; each event's data is a JSON object",
                            "content": {"text/event-stream": {"schema": SSE_EVENT}},
                        },
                        "400": _error("Last-Event-ID is not an event id"),
                        "404": _error("Job not found (or another user's)"),
                    },
                    params=[
                        _param("job_id", "path", UUID),
                        USER,
                        _param(
                            "Last-Event-ID",
                            "header",
                            {"type": "integer", "minimum": 0, "maximum": payloads.MAX_EVENT_ID},
                            required=False,
                        ),
                    ],
                )
            },
            "/debug/supervisors": {
                "get": {
                    "summary": "Live supervisors (X-Admin-Token)",
                    "parameters": [_param("X-Admin-Token", "header", {"type": "string"})],
                    "responses": {
                        "200": _json({"type": "object"}, "Snapshot"),
                        **AUTH,
                        "404": _error("Debug is off (no admin token configured)"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness and database readiness",
                    "security": [],
                    "responses": {
                        "200": _json(schema_of(replies.Health, reply=True), "Healthy"),
                        **DATABASE,
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0")},
                }
            },
        },
        "components": {
            "securitySchemes": {"serviceToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": schema_of(replies.ErrorReply, reply=True),
                "Blocked": schema_of(replies.BlockedReply, reply=True),
                "JobAccepted": schema_of(JobAccepted, reply=True),
                "Cancelled": schema_of(replies.Cancelled, reply=True),
                "Run": schema_of(Run, reply=True, hide=replies.RUN_HIDDEN, extra=replies.RUN_EXTRA),
                "Settings": schema_of(replies.SettingsReply, reply=True),
            },
        },
    }


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.json_response(
        document(settings.generation.max_questions_per_chunk, settings.uploads.max_documents)
    )
