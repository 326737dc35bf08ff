"""The backend described in OpenAPI 3.0, from the route table (`routes.py`).

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
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from deepmemory_service import __version__
from deepmemory_service.api import payloads, replies
from deepmemory_service.api.endpoint import Endpoint, Param, Reply
from deepmemory_service.models import TITLE_MAX_CHARS, JobAccepted, Run
from deepmemory_service.platform.config import Settings
from deepmemory_service.runs.settings import DeepMemorySettings


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
    if tp is payloads.Title:
        return {"type": "string", "maxLength": TITLE_MAX_CHARS}
    simple: dict[Any, dict[str, Any]] = {
        uuid.UUID: {"type": "string", "format": "uuid"},
        datetime: {"type": "string", "format": "date-time"},
        int: {"type": "integer"},
        float: {"type": "number"},
        bool: {"type": "boolean"},
        str: {"type": "string"},
    }
    return dict(simple[tp])


def ref(name: str) -> dict[str, Any]:
    """A reference to one of the document's named schemas (`SCHEMAS`)."""
    return {"$ref": f"#/components/schemas/{name}"}


def error(description: str, **headers: str) -> Reply:
    """A status answered with the API's error body; `headers` say what each header means
    (an underscore in a name is a hyphen)."""
    return Reply(description, headers={k.replace("_", "-"): v for k, v in headers.items()})


def json_reply(schema: Mapping[str, Any], description: str) -> Reply:
    return Reply(description, schema)


UUID = schema_of(uuid.UUID)
USER = Param("user_id", "query", UUID)


def limit(most: int) -> Param:
    """How many of a listing to return (newest first)."""
    return Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": most}, False)


# what any route behind the service token may answer besides its own replies
AUTH = {"401": error("Missing or invalid service token")}
DATABASE = {
    "503": error(
        "The database is unavailable, or this user's commands are queued full",
        Retry_After="Seconds to wait before trying again (when the database is unavailable)",
    )
}
QUERY = {"422": error("A parameter is missing or invalid; the detail names it")}
BODY = {
    "400": error("The body is not JSON, nested too deep, or cannot be decoded"),
    "413": error("The body is larger than the limit (before or after decoding)"),
    "415": error(
        "The body's Content-Encoding is not supported",
        Accept_Encoding="The encodings accepted",
    ),
    "422": error("A field is missing or invalid; the detail names it"),
}
# an upload's body is a file's bytes: what may be wrong with them
UPLOAD = {
    "400": error("The body's Content-Encoding data cannot be decoded"),
    "413": error("The file is larger than uploads.max_file_bytes (before or after decoding)"),
    "415": BODY["415"],
    "422": error("A parameter is missing or invalid, or the file is not text; the detail says"),
}
NOT_FOUND = {"404": error("Training run not found (or another user's)")}

# the named schemas replies refer to
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": schema_of(replies.ErrorReply, reply=True),
    "Blocked": schema_of(replies.BlockedReply, reply=True),
    "JobAccepted": schema_of(JobAccepted, reply=True),
    "Cancelled": schema_of(replies.Cancelled, reply=True),
    "Run": schema_of(Run, reply=True, hide=replies.RUN_HIDDEN, extra=replies.RUN_EXTRA),
    "Settings": schema_of(DeepMemorySettings, reply=True),
}


def _reply(reply: Reply) -> dict[str, Any]:
    schema = ref("Error") if reply.schema is None else dict(reply.schema)
    out: dict[str, Any] = {
        "description": reply.description,
        "content": {reply.content_type: {"schema": schema}},
    }
    if reply.headers:
        out["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in reply.headers.items()
        }
    return out


def _param(param: Param, settings: Settings) -> dict[str, Any]:
    schema = dict(param.schema)
    if param.most is not None:
        schema["maximum"] = param.most(settings)
    return {"name": param.name, "in": param.where, "required": param.required, "schema": schema}


def operation(endpoint: Endpoint, settings: Settings) -> dict[str, Any]:
    """What the document says of one endpoint: its summary, its parameters and body, and
    every status it may answer (those any endpoint of its kind may, then its own)."""
    queried = any(p.where in ("query", "path") for p in endpoint.params)
    replies_ = {
        **(AUTH if endpoint.token else {}),
        **(DATABASE if endpoint.database else {}),
        **(QUERY if queried else {}),
        **(BODY if endpoint.body else {}),
        **(UPLOAD if endpoint.upload else {}),
        **endpoint.replies,
    }
    op: dict[str, Any] = {
        "summary": endpoint.summary,
        "responses": {status: _reply(reply) for status, reply in replies_.items()},
    }
    if not endpoint.token:
        op["security"] = []
    if endpoint.params:
        op["parameters"] = [_param(p, settings) for p in endpoint.params]
    if endpoint.body is not None:
        schema = schema_of(endpoint.body)
        bounds = endpoint.bounds(settings) if endpoint.bounds else {}
        for name, extra in bounds.items():
            schema["properties"][name] = {**schema["properties"][name], **extra}
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if endpoint.upload:
        binary = {"type": "string", "format": "binary"}
        op["requestBody"] = {
            "required": True,
            "content": {"application/octet-stream": {"schema": binary}},
        }
    return op


def document(endpoints: Sequence[Endpoint], settings: Settings) -> dict[str, Any]:
    """The backend's OpenAPI document; the bounds a request is held to are the configured
    ones (questions per chunk, documents per upload)."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation(endpoint, settings)
    return {
        "openapi": "3.0.3",
        "info": {"title": "deepmemory-service backend", "version": __version__},
        "servers": [{"url": "/v1/api"}],
        "security": [{"serviceToken": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"serviceToken": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
    }
