"""The request pipeline: request context for the logs, every error as a JSON `{"detail"}`
reply, the backend's service token, and the headers every reply carries."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from deepmemory_service.api.keys import SETTINGS
from deepmemory_service.api.replies import database_trouble
from deepmemory_service.api.routes import OPEN_PATHS
from deepmemory_service.db.database import UNAVAILABLE
from deepmemory_service.errors import ServiceError, Unauthorized
from deepmemory_service.storage.embedders import EmbeddingError

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# headers of an aiohttp HTTP error that the client needs to act on
_PASSED_HEADERS = frozenset({"allow", "retry-after"})
_HTTP_DETAILS = {
    404: "Not found",
    405: "Method not allowed",
}


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Binds a request id (echoed back as X-Request-ID) for every log line of the request."""
    structlog.contextvars.clear_contextvars()
    request_id = request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(
        request_id=request_id, method=request.method, path=request.path
    )
    response = await handler(request)
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Each error once, as JSON. Nothing is re-run here: a handler whose work is safe to
    repeat retries its own reads (`db.retrying`)."""
    try:
        return await handler(request)
    except ServiceError as exc:
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
    except EmbeddingError as exc:
        # a remote embedder failed: the client can act on the message; not a crash
        return web.json_response({"detail": str(exc)}, status=502)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = _HTTP_DETAILS.get(exc.status, exc.reason)
        if exc.status == 413:
            limit = request.config_dict[SETTINGS].http.max_body_bytes
            detail = f"Request body too large: the limit is {limit} bytes"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in _PASSED_HEADERS}
        return web.json_response({"detail": detail}, status=exc.status, headers=headers)
    except ConnectionResetError:
        raise
    except UNAVAILABLE as exc:
        log.warning("database unavailable", error=str(exc) or type(exc).__name__)
        return web.json_response(
            {"detail": database_trouble(exc)}, status=503, headers={"Retry-After": "1"}
        )
    except Exception:
        log.exception("unhandled error")
        return web.json_response({"detail": "Internal server error"}, status=500)


async def common_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """Every reply (an `on_response_prepare` signal): its type is never sniffed into another,
    and a JSON reply, one user's data that changes, is never stored by a cache."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.content_type == "application/json":
        response.headers.setdefault("Cache-Control", "no-store")


def has_bearer(request: web.Request, expected: str) -> bool:
    """`Authorization: Bearer <expected>`, compared in constant time."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.encode()
    )


@web.middleware
async def service_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The backend answers only callers holding the service token (the gateway, operators)."""
    if request.path in OPEN_PATHS:
        return await handler(request)
    if not has_bearer(request, request.app[SETTINGS].service_token):
        raise Unauthorized("Missing or invalid service token (Authorization: Bearer <token>)")
    return await handler(request)
