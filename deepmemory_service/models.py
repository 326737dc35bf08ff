"""Values of the domain: run statuses, runs, chunks and corpora, jobs, events."""

from __future__ import annotations

import enum
import json
import uuid
from datetime import datetime
from functools import cached_property
from typing import Any, Literal

from attrs import field, frozen


class RunStatus(enum.StrEnum):
    GENERATING = "generating"
    GENERATED = "generated"
    TRAINING = "training"
    COMPLETED = "completed"
    GENERATING_FAILED = "generating_failed"
    TRAINING_FAILED = "training_failed"

    @property
    def is_failed(self) -> bool:
        return self in FAILED_STATUSES


FAILED_STATUSES = frozenset({RunStatus.GENERATING_FAILED, RunStatus.TRAINING_FAILED})


class JobKind(enum.StrEnum):
    GENERATE = "generate"
    TRAIN = "train"


@frozen
class Run:
    id: uuid.UUID
    user_id: uuid.UUID
    status: RunStatus
    error_message: str | None
    questions_per_chunk: int
    auto_train: bool
    chunk_id_max: int
    total_chunks: int
    generated_chunks: int
    pair_count: int
    metrics: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # the completed run whose questions this one copied for its unchanged chunks
    reused_from: uuid.UUID | None = None
    reused_chunks: int = 0
    # when a user asked the run to stop: on the failed run a cancel made of it (its status
    # stays `generating_failed` or `training_failed`), cleared when it is resumed
    cancel_requested_at: datetime | None = None
    # what the checks of an LLM's questions did: the questions turned down, by reason; the
    # times a chunk was asked again (LLM calls, counted in `llm_calls` too); the chunks that
    # kept fewer than `questions_per_chunk` questions once the asking again ran out
    question_rejections: dict[str, int] = field(factory=dict)
    question_reasks: int = 0
    short_chunks: int = 0


@frozen
class Chunk:
    id: int
    text: str


# a search question is a line, not a page; a longer "question" is a broken reply
MAX_QUESTION_CHARS = 1000


def text_problem(value: str) -> str | None:
    """Why PostgreSQL cannot store `value` as text, or None: it holds neither NUL nor
    unpaired surrogates (which JSON, and so an API's reply, may carry)."""
    if "\x00" in value:
        return "a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "an unpaired surrogate"
    return None


def question_problem(question: str) -> str | None:
    """Why `question` cannot be stored as a training question, or None."""
    if not question.strip():
        return "an empty question"
    if len(question) > MAX_QUESTION_CHARS:
        return f"a question of {len(question):,} characters (at most {MAX_QUESTION_CHARS:,})"
    return text_problem(question)


@frozen
class Corpus:
    """The catalog's side of a user's vector store: `rows` chunks, up to id `last_id`, held
    by store version `version` (None: a store from before versions), made by `embedder`."""

    rows: int
    version: str | None
    embedder: str
    dimension: int
    last_id: int | None


@frozen
class CatalogChunk:
    """A chunk as the catalog has it, with what the vector store keeps beside it."""

    id: int
    text: str
    document_id: uuid.UUID
    position: int
    title: str | None


# the longest title a document may be given: a file's name and more (the page's "(part i of
# n)"), and small enough that a listing of a thousand documents stays small
TITLE_MAX_CHARS = 500


@frozen
class Document:
    """A document as the catalog lists it (a title stored longer than `TITLE_MAX_CHARS`,
    before that bound, cut to it and ending in "…")."""

    id: uuid.UUID
    title: str | None
    chunk_count: int
    created_at: datetime


@frozen
class Pair:
    """One synthetic question about one chunk."""

    chunk_id: int
    question_index: int
    question: str


@frozen
class Job:
    id: uuid.UUID
    run_id: uuid.UUID
    user_id: uuid.UUID
    kind: JobKind
    status: str


@frozen
class JobEvent:
    """One stored event of a job's stream; `id` orders the stream and serves Last-Event-ID."""

    id: int
    job_id: uuid.UUID
    event: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS

    @cached_property
    def sse_frame(self) -> bytes:
        """The event as one Server-Sent Events frame, encoded once however many subscribers
        it goes to (compact JSON holds no line break, so it is one `data` line)."""
        data = json.dumps(self.data, separators=(",", ":"))
        return f"id: {self.id}\nevent: {self.event}\ndata: {data}\n\n".encode()


# the events of a job's stream; the last one is `done` or `failed`
EventName = Literal["status", "progress", "done", "failed"]
TERMINAL_EVENTS = frozenset({"done", "failed"})


@frozen
class JobAccepted:
    job_id: uuid.UUID
    training_run_id: uuid.UUID
    message: str | None = None
