"""The service's errors, each with the HTTP status it means and a detail a client can act on.

A leaf: it imports nothing that talks to a database, a store or the network, so the actor
and the domain raise these without depending on aiohttp or asyncpg. `middlewares.py` turns
them into JSON replies.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from deepmemory_service.models import RunStatus


class ServiceError(Exception):
    status = 500
    # response headers the client needs besides the body
    headers: Mapping[str, str] = MappingProxyType({})

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


class TooLarge(ServiceError):
    """A body over the limit of its endpoint (an upload's own, larger than other bodies')."""

    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body too large: the limit is {limit} bytes")


class UnsupportedEncoding(ServiceError):
    """A request body in a Content-Encoding the service cannot decode (RFC 9110 §15.5.16)."""

    status = 415
    headers = MappingProxyType({"Accept-Encoding": "gzip, deflate"})


class BadGateway(ServiceError):
    status = 502


class TooManyRequests(ServiceError):
    """One user holds as many of something at once as it may; one more waits a moment."""

    status = 429
    headers = MappingProxyType({"Retry-After": "1"})


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


def not_running(status: RunStatus) -> BadRequest:
    return BadRequest(
        "Training run is not generating or training, so there is nothing to cancel; "
        f"its status is {status}"
    )


def not_failed(status: RunStatus) -> BadRequest:
    return BadRequest(
        "Training run is not in a failed status (generating_failed or training_failed); "
        f"its status is {status}"
    )
