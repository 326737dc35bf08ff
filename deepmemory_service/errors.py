"""Domain errors and the one middleware that turns every error into a JSON `{"detail"}` reply."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from deepmemory_service.db import UNAVAILABLE, retrying
from deepmemory_service.embedders import EmbeddingError
from deepmemory_service.keys import SETTINGS
from deepmemory_service.models import RunStatus
from deepmemory_service.store import StoreError

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ServiceError(Exception):
    status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}


class BadRequest(ServiceError):
    status = 400


class InvalidInput(ServiceError):
    """A body or parameter that does not fit the schema; the detail names the field."""

    status = 422


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Busy(ServiceError):
    status = 503


class BadGateway(ServiceError):
    status = 502


class BlockingRunExists(Conflict):
    def __init__(self, run_id: uuid.UUID, status: RunStatus) -> None:
        super().__init__("Cannot start new generation: an unfinished training run exists")
        self.run_id = run_id
        self.run_status = status

    def body(self) -> dict[str, Any]:
        return {
            "detail": self.detail,
            "blocking_run_id": str(self.run_id),
            "blocking_run_status": str(self.run_status),
        }


RUN_NOT_FOUND = "Training run not found"


def run_not_found() -> NotFound:
    """The same reply for a missing run and another user's run."""
    return NotFound(RUN_NOT_FOUND)


def not_failed(status: RunStatus) -> BadRequest:
    return BadRequest(
        "Training run is not in a failed status (generating_failed or training_failed); "
        f"its status is {status}"
    )


# reads are repeated through a dropped connection or a database restart; a command is not
# (its transaction may have committed before the reply was lost), it gets a 503
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DATABASE_UNAVAILABLE = "Database unavailable; retry shortly"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.method in SAFE_METHODS:
            return await retrying(lambda: handler(request), errors=UNAVAILABLE)
        return await handler(request)
    except ServiceError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except (StoreError, EmbeddingError) as exc:
        # the store cannot serve this request as configured (an embedder mismatch, say),
        # or a remote embedder failed: the client can act on the message; not a crash
        status = 409 if isinstance(exc, StoreError) else 502
        return web.json_response({"detail": str(exc)}, status=status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = _HTTP_DETAILS.get(exc.status, exc.reason)
        if exc.status == 413:
            limit = request.config_dict[SETTINGS].http.max_body_bytes
            detail = f"Request body too large: the limit is {limit} bytes"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        return web.json_response({"detail": detail}, status=exc.status, headers=headers)
    except (ConnectionResetError, web.HTTPClientError):
        raise
    except UNAVAILABLE as exc:
        log.warning("database unavailable", error=str(exc))
        return web.json_response(
            {"detail": DATABASE_UNAVAILABLE}, status=503, headers={"Retry-After": "1"}
        )
    except Exception:
        log.exception("unhandled error")
        return web.json_response({"detail": "Internal server error"}, status=500)


_HTTP_DETAILS = {
    404: "Not found",
    405: "Method not allowed",
}
