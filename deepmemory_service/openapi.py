"""`GET /v1/api/openapi.json`: the backend described in OpenAPI 3.0.

Request bodies are derived from the attrs classes in `payloads.py`, so the document cannot
drift from what the service accepts; tests check that every route is described and every
described path is routed.
"""

from __future__ import annotations

import types
import typing
import uuid
from typing import Any

import attrs
from aiohttp import web

from deepmemory_service import __version__, payloads
from deepmemory_service.keys import SETTINGS

routes = web.RouteTableDef()

_ERROR = {"$ref": "#/components/schemas/Error"}
_ACCEPTED = {"$ref": "#/components/schemas/JobAccepted"}
_RUN = {"$ref": "#/components/schemas/Run"}


def schema_of(tp: Any) -> dict[str, Any]:
    """JSON schema of a payload type: attrs classes, UUIDs, scalars, lists, optionals."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return {**schema_of(inner), "nullable": True}
    if origin is list:
        return {"type": "array", "items": schema_of(typing.get_args(tp)[0])}
    if attrs.has(tp):
        hints = typing.get_type_hints(tp)
        fields = attrs.fields(tp)
        return {
            "type": "object",
            "additionalProperties": False,
            "required": [f.name for f in fields if f.default is attrs.NOTHING],
            "properties": {f.name: schema_of(hints[f.name]) for f in fields},
        }
    if tp is payloads.Text:
        return {"type": "string", "pattern": payloads.NOT_BLANK}
    simple = {
        uuid.UUID: {"type": "string", "format": "uuid"},
        int: {"type": "integer"},
        bool: {"type": "boolean"},
        str: {"type": "string"},
    }
    return dict(simple[tp])


def _body(cls: type, **overrides: dict[str, Any]) -> dict[str, Any]:
    schema = schema_of(cls)
    for name, extra in overrides.items():
        schema["properties"][name] = {**schema["properties"][name], **extra}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _param(name: str, where: str, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema}


USER = _param("user_id", "query", {"type": "string", "format": "uuid"})
ERRORS = {
    "400": _json(_ERROR, "Bad request (malformed JSON, or not allowed in the run's status)"),
    "401": _json(_ERROR, "Missing or invalid service token"),
    "422": _json(_ERROR, "A field is missing or invalid; the detail names it"),
}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **ERRORS}}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    return op


def document(max_questions: int) -> dict[str, Any]:
    run_id = _param("run_id", "path", {"type": "string", "format": "uuid"})
    not_found = _json(_ERROR, "Training run not found (or another user's)")
    settings = {"$ref": "#/components/schemas/Settings"}
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
                        "202": _json(_ACCEPTED, "Generation started"),
                        "409": _json(
                            {"$ref": "#/components/schemas/Blocked"},
                            "An unfinished training run exists",
                        ),
                    },
                    body=_body(
                        payloads.GenerateIn,
                        questions_per_chunk={"minimum": 1, "maximum": max_questions},
                    ),
                )
            },
            "/deep-memory/proceed": {
                "post": _op(
                    "Resume a failed run from the point of failure",
                    {"202": _json(_ACCEPTED, "Resumed"), "404": not_found},
                    body=_body(payloads.ProceedIn),
                )
            },
            "/deep-memory/cancel": {
                "post": _op(
                    "Stop a generating or training run, keeping its pairs",
                    {
                        "200": _json({"$ref": "#/components/schemas/Cancelled"}, "Stopped"),
                        "202": _json({"$ref": "#/components/schemas/Cancelled"}, "Asked to stop"),
                        "400": _json(_ERROR, "The run is not generating or training"),
                        "404": not_found,
                    },
                    body=_body(payloads.CancelIn),
                )
            },
            "/deep-memory/train": {
                "post": _op(
                    "Train a generated run",
                    {"202": _json(_ACCEPTED, "Training started"), "404": not_found},
                    body=_body(payloads.TrainIn),
                )
            },
            "/deep-memory/estimate": {
                "get": _op(
                    "What a generate would send to the LLM now: chunks, calls, tokens, cost",
                    {"200": _json({"type": "object"}, "The estimate")},
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
                                "properties": {"runs": {"type": "array", "items": _RUN}},
                            },
                            "Runs",
                        )
                    },
                    params=[
                        USER,
                        _param(
                            "limit",
                            "query",
                            {"type": "integer", "minimum": 1, "maximum": 500},
                            required=False,
                        ),
                    ],
                )
            },
            "/deep-memory/runs/{run_id}": {
                "get": _op(
                    "One run",
                    {"200": _json(_RUN, "The run"), "404": not_found},
                    params=[run_id, USER],
                ),
                "delete": _op(
                    "Delete a failed run and its pairs",
                    {
                        "200": _json({"$ref": "#/components/schemas/Message"}, "Deleted"),
                        "404": not_found,
                    },
                    params=[run_id, USER],
                ),
            },
            "/deep-memory/settings": {
                "get": _op(
                    "Deep Memory settings", {"200": _json(settings, "Settings")}, params=[USER]
                ),
                "put": _op(
                    "Turn Deep Memory on or off",
                    {
                        "200": _json(settings, "Settings"),
                        "409": _json(_ERROR, "The model may not be enabled"),
                    },
                    body=_body(payloads.SettingsIn),
                ),
            },
            "/documents": {
                "post": _op(
                    "Add documents: chunked, embedded and stored",
                    {
                        "201": _json({"type": "object"}, "Stored"),
                        "409": _json(_ERROR, "The vector store was made by another embedder"),
                    },
                    body=_body(payloads.DocumentsIn),
                )
            },
            "/search": {
                "get": _op(
                    "Top-k chunks, with or without the trained model",
                    {
                        "200": _json({"type": "object"}, "Results"),
                        "409": _json(_ERROR, "No trained model"),
                    },
                    params=[
                        USER,
                        _param("q", "query", {"type": "string", "minLength": 1, "maxLength": 2000}),
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
                            "description": "The event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "404": _json(_ERROR, "Job not found"),
                    },
                    params=[
                        _param("job_id", "path", {"type": "string", "format": "uuid"}),
                        USER,
                        _param(
                            "Last-Event-ID",
                            "header",
                            {"type": "integer", "minimum": 0},
                            required=False,
                        ),
                    ],
                )
            },
            "/debug/supervisors": {
                "get": _op(
                    "Live supervisors (X-Admin-Token)",
                    {
                        "200": _json({"type": "object"}, "Snapshot"),
                        "404": _json(_ERROR, "Debug is off"),
                    },
                    params=[_param("X-Admin-Token", "header", {"type": "string"})],
                )
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness and database readiness",
                    "security": [],
                    "responses": {"200": {"description": "Healthy"}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI"}},
                }
            },
        },
        "components": {
            "securitySchemes": {"serviceToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["detail"],
                    "properties": {"detail": {"type": "string"}},
                },
                "Message": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {"message": {"type": "string"}},
                },
                "JobAccepted": {
                    "type": "object",
                    "required": ["job_id", "training_run_id"],
                    "properties": {
                        "job_id": {"type": "string", "format": "uuid"},
                        "training_run_id": {"type": "string", "format": "uuid"},
                        "message": {"type": "string"},
                    },
                },
                "Cancelled": {
                    "type": "object",
                    "required": ["training_run_id", "status", "message"],
                    "properties": {
                        "training_run_id": {"type": "string", "format": "uuid"},
                        "status": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
                "Blocked": {
                    "type": "object",
                    "required": ["detail", "blocking_run_id", "blocking_run_status"],
                    "properties": {
                        "detail": {"type": "string"},
                        "blocking_run_id": {"type": "string", "format": "uuid"},
                        "blocking_run_status": {"type": "string"},
                    },
                },
                "Run": {
                    "type": "object",
                    "required": ["id", "status"],
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "status": {"type": "string"},
                        "error_message": {"type": "string", "nullable": True},
                    },
                },
                "Settings": {
                    "type": "object",
                    "required": [
                        "enabled",
                        "last_trained_at",
                        "last_training_run_id",
                        "can_enable",
                        "total_chunks",
                        "trained_chunk_count",
                        "has_blocking_run",
                        "blocking_run_id",
                        "blocking_run_status",
                        "is_cloud",
                    ],
                },
            },
        },
    }


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    gen = request.app[SETTINGS].generation
    return web.json_response(document(gen.max_questions_per_chunk))
