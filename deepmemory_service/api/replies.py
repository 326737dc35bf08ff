"""Reply bodies: the attrs classes the backend's JSON is made from, and that the OpenAPI
document describes (`openapi.schema_of`), so the two cannot drift apart.

`to_json` turns a reply into JSON values: UUIDs and enums as strings, datetimes in ISO 8601,
and a field whose default is None left out while it is None (`JobAccepted.message`).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any, Literal

import attrs
import cattrs
from attrs import frozen

from deepmemory_service.db.database import DatabaseNotAnswering
from deepmemory_service.llm.usage import Prices
from deepmemory_service.models import Document, Run, RunStatus
from deepmemory_service.storage.nearest import SearchResult

# a run as the API shows it: its own fields but these; the job that last worked on it, and
# (beyond the spec) what it spent at the LLM when prices are configured, and how many of its
# chunks were asked about afresh and from which run it reused the others, and when a user
# asked it to stop (null when nobody did: always there, unlike a field left out when None)
RUN_HIDDEN = frozenset({"user_id", "chunk_id_max", "reused_from", "cancel_requested_at"})
RUN_EXTRA: dict[str, Any] = {
    "latest_job_id": uuid.UUID | None,
    "cost_usd": float | None,
    "new_chunks": int,
    "reused_from_run_id": uuid.UUID | None,
    "cancel_requested_at": datetime | None,
}


@frozen
class SearchReply:
    results: list[SearchResult]
    deep_memory: bool


@frozen
class DocumentsReply:
    """A user's documents, newest first, the largest body a POST /documents may have (so
    that a client can split a large upload), and the largest file POST /documents/file
    takes."""

    documents: list[Document]
    total_documents: int
    total_chunks: int
    max_body_bytes: int
    # the largest file POST /documents/file takes
    max_file_bytes: int


@frozen
class FileAdded:
    """A file added as one document: its id (None when it was skipped as `unchanged`: the
    user has a document of the same title and text), the encoding its bytes were read in,
    its chunks and the user's total."""

    title: str
    encoding: str
    chunks: int
    total_chunks: int
    unchanged: bool
    document_id: uuid.UUID | None = None


@frozen
class Cancelled:
    """A cancel's outcome: the run's status after it, and what happened in words."""

    training_run_id: uuid.UUID
    status: RunStatus
    message: str


@frozen
class Message:
    message: str


@frozen
class ErrorReply:
    detail: str


@frozen
class BlockedReply:
    """The 409 of a generate refused because an unfinished run exists."""

    detail: str
    blocking_run_id: uuid.UUID
    blocking_run_status: RunStatus


@frozen
class Health:
    status: Literal["ok"]


@frozen
class Unhealthy:
    """The health check's 503: the database is down, or does not answer in time."""

    status: Literal["unavailable"]
    detail: str


DATABASE_UNAVAILABLE = "Database unavailable; retry shortly"
DATABASE_NOT_ANSWERING = "Database not answering; retry shortly"


def database_trouble(exc: BaseException) -> str:
    """What a client is told of a database that is down (`UNAVAILABLE`): that it is
    unavailable, or, when it did not answer within a request's bounds, not answering."""
    return DATABASE_NOT_ANSWERING if isinstance(exc, DatabaseNotAnswering) else DATABASE_UNAVAILABLE


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_unstructure_hook(uuid.UUID, str)
    conv.register_unstructure_hook(datetime, datetime.isoformat)
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum), lambda e: e.value
    )

    def fields_of(cls: type) -> Any:
        fields = attrs.fields(cls)

        def unstructure(value: Any) -> dict[str, Any]:
            return {
                f.name: conv.unstructure(getattr(value, f.name))
                for f in fields
                if not (f.default is None and getattr(value, f.name) is None)
            }

        return unstructure

    conv.register_unstructure_hook_factory(attrs.has, fields_of)
    return conv


_CONVERTER = _converter()


def to_json(value: Any) -> Any:
    return _CONVERTER.unstructure(value)


def run_json(run: Run, latest_job_id: uuid.UUID | None, prices: Prices) -> dict[str, Any]:
    body = {k: v for k, v in to_json(run).items() if k not in RUN_HIDDEN}
    body["latest_job_id"] = to_json(latest_job_id)
    body["cost_usd"] = prices.cost(run.prompt_tokens, run.completion_tokens)
    body["new_chunks"] = run.generated_chunks - run.reused_chunks
    body["reused_from_run_id"] = to_json(run.reused_from)
    body["cancel_requested_at"] = to_json(run.cancel_requested_at)
    return body
