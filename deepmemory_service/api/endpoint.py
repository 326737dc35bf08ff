"""One endpoint of the backend as the route table lists it (`routes.py`): what registers it,
what the OpenAPI document says of it (`openapi.py`), and how the gateway exposes it to a
logged-in user (`gateway/proxy.py`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import attrs
from aiohttp import web
from attrs import frozen

from deepmemory_service.platform.config import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EVENT_STREAM = "text/event-stream"


@frozen
class Param:
    """A parameter of the query, the path or the headers, with its JSON schema."""

    name: str
    where: Literal["query", "path", "header"]
    schema: Mapping[str, Any]
    required: bool = True
    # the largest value the settings allow (the document's `maximum`)
    most: Callable[[Settings], int] | None = None


@frozen
class Reply:
    """One status an endpoint answers: what it means, the body's schema (None: the API's
    error body) and content type, and the headers that come with it."""

    description: str
    schema: Mapping[str, Any] | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = attrs.field(factory=lambda: MappingProxyType({}))


@frozen
class Public:
    """How the gateway exposes an endpoint to the user a session or token names: at `path`
    (its path parameters in the endpoint's order, named as the public API names them), with
    `user_id` put in the query (or the body, for an endpoint that takes one) from the
    identity only. With `only`, the gateway forwards just those body fields."""

    path: str
    only: tuple[str, ...] | None = None


@frozen
class Endpoint:
    """A backend route: `path` is under /v1/api. `body` is the class a JSON body is read
    into; `bounds` the limits of its fields that the settings decide (for the document).
    `token`: callers need the service token; `database`: it may answer 503 when the
    database does not. An `upload` takes a file's bytes as its body (not JSON), up to
    `uploads.max_file_bytes`."""

    method: str
    path: str
    handler: Handler
    summary: str
    replies: Mapping[str, Reply]
    body: type | None = None
    bounds: Callable[[Settings], dict[str, dict[str, Any]]] | None = None
    params: tuple[Param, ...] = ()
    public: Public | None = None
    token: bool = True
    database: bool = True
    upload: bool = False

    @property
    def streams(self) -> bool:
        """It answers with an event stream (Server-Sent Events)."""
        ok = self.replies.get("200")
        return ok is not None and ok.content_type == EVENT_STREAM
