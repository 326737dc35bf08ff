"""The one module that talks to PostgreSQL (asyncpg). SQL text lives in `sql/queries.sql`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any, TypeVar

import asyncpg
import attrs
import structlog
import yarl

from deepmemory_service.errors import Busy
from deepmemory_service.models import (
    TITLE_MAX_CHARS,
    CatalogChunk,
    Chunk,
    Corpus,
    Document,
    Job,
    JobEvent,
    JobKind,
    Pair,
    Run,
    RunStatus,
)
from deepmemory_service.platform.retry import RetryPolicy, retry

log = structlog.get_logger(__name__)
# how long closing the pool waits for connections still checked out
CLOSE_S = 5.0
T = TypeVar("T")
# one constant: every instance that migrates at once takes the same advisory lock
MIGRATION_LOCK = 0x6D656D6F7279

UniqueViolation = asyncpg.UniqueViolationError


class DatabaseNotAnswering(Exception):
    """The database did not answer within the caller's bound: no free connection, or a
    statement without a reply (a server stopped or swamped, packets dropped). The
    connection that waited is cut, so the pool replaces it."""


class UserBusy(Busy):
    """The user's lock stayed taken for longer than a request waits for it."""

    headers = MappingProxyType({"Retry-After": "1"})


# the server went away, is restarting or does not answer: a request may say so (503)
# instead of crashing
UNAVAILABLE: tuple[type[BaseException], ...] = (
    DatabaseNotAnswering,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    # the server's FATAL message for a terminated session can arrive while the client
    # starts its next query, leaving the protocol confused ("cannot switch to state")
    asyncpg.exceptions.InternalClientError,
    ConnectionRefusedError,
)
# errors that mean "the connection or server went away", worth a reconnect and retry by
# the service's own background work (any socket error counts there)
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE, OSError, ConnectionError)


class DatabaseUnreachable(Exception):
    """No connection could be made to the database; the message says where and why."""


def redacted(url: str) -> str:
    """A database URL fit to show: without its password."""
    try:
        parsed = yarl.URL(url)
    except ValueError:
        return "(an unparsable URL)"
    return str(parsed.with_password("***")) if parsed.password else url


def _unreachable(url: str, exc: BaseException) -> DatabaseUnreachable:
    if isinstance(exc, asyncpg.ClientConfigurationError):
        reason = f"not a PostgreSQL URL ({exc})"
    elif isinstance(exc, TimeoutError):
        reason = "no answer in time"
    else:
        reason = str(exc) or type(exc).__name__
    return DatabaseUnreachable(
        f"cannot connect to the database at {redacted(url)}: {reason}; check "
        "DEEPMEMORY_DATABASE_URL (empty: the embedded PostgreSQL in the data directory)"
    )


# what connecting can fail with: a bad URL, a refused or unresolvable address, no answer, or
# the server refusing the login or the database name
_CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@cache
def queries() -> dict[str, str]:
    text = resources.files("deepmemory_service.db").joinpath("sql/queries.sql").read_text()
    named: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        named[name.strip()] = body.strip()
    return named


def _run(row: asyncpg.Record) -> Run:
    return Run(
        id=row["id"],
        user_id=row["user_id"],
        status=RunStatus(row["status"]),
        error_message=row["error_message"],
        questions_per_chunk=row["questions_per_chunk"],
        auto_train=row["auto_train"],
        chunk_id_max=row["chunk_id_max"],
        total_chunks=row["total_chunks"],
        generated_chunks=row["generated_chunks"],
        pair_count=row["pair_count"],
        metrics=row["metrics"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
        llm_calls=row["llm_calls"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        reused_from=row["reused_from"],
        reused_chunks=row["reused_chunks"],
        cancel_requested_at=row["cancel_requested_at"],
        question_rejections=row["question_rejections"],
        question_reasks=row["question_reasks"],
        short_chunks=row["short_chunks"],
    )


def _job(row: asyncpg.Record) -> Job:
    return Job(row["id"], row["run_id"], row["user_id"], JobKind(row["kind"]), row["status"])


def _event(row: asyncpg.Record) -> JobEvent:
    return JobEvent(row["id"], row["job_id"], row["event"], row["data"])


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


@attrs.frozen
class Spent:
    """LLM calls and tokens spent (by a job, or by a run over its jobs)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Spent) -> Spent:
        return Spent(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.calls, self.prompt_tokens, self.completion_tokens)


NOTHING_SPENT = Spent()


@attrs.frozen
class Checked:
    """What the checks of an LLM's questions did (in a run, over its jobs): the questions
    turned down by reason, the times a chunk was asked again, the chunks left short."""

    rejections: dict[str, int] = attrs.field(factory=dict)
    reasks: int = 0
    short_chunks: int = 0

    @classmethod
    def of(cls, run: Run) -> Checked:
        return cls(dict(run.question_rejections), run.question_reasks, run.short_chunks)


NOTHING_CHECKED = Checked()


@attrs.frozen
class RunListing:
    run: Run
    latest_job_id: uuid.UUID | None


@attrs.frozen
class UserSettingsRow:
    enabled: bool
    last_trained_at: Any
    last_training_run_id: uuid.UUID | None
    can_enable: bool
    can_enable_reason: str | None
    trained_chunk_count: int
    metrics: dict[str, Any] | None


@attrs.frozen
class Waits:
    """How long a use of the database waits on it: for a free connection of the pool, for
    each statement (BEGIN and COMMIT too), for the user's lock, and for a read in all with
    its retries (the statement bound). None: as long as the pool's own bounds allow (10 s
    to connect, 60 s a statement), the patience of a run's work, which waits an outage
    out and retries; a request bounds them, to answer 503 in seconds instead of hanging."""

    acquire_s: float | None = None
    statement_s: float | None = None
    lock_s: float | None = None


PATIENT = Waits()
# how often a bounded wait for the user's lock asks again, at first and at most
LOCK_POLL_S = (0.01, 0.2)


# a brief outage (a dropped connection, a restart): 0.2, 0.4, 0.8, 1.6 s between five tries
DB_RETRY = RetryPolicy(attempts=5, base_s=0.2, max_s=3.2, jitter=False)


async def retrying(
    step: Callable[[], Awaitable[T]], errors: tuple[type[BaseException], ...] = CONNECTION_ERRORS
) -> T:
    """`step()`, again after a pause while the database is unreachable (pool reconnects)."""

    def logged(exc: BaseException, attempt: int, _delay: float) -> None:
        log.warning("database unavailable; retrying", attempt=attempt + 1, error=str(exc))

    return await retry(
        step, DB_RETRY, retry_on=lambda exc: isinstance(exc, errors), on_retry=logged
    )


# the columns of an LLM rate budget's shared state, in the order `budget_save` takes them
BUDGET_STATE = ("factor", "adjusted_at", "hold_until", "paused_until", "rate_limited")


class LeaseLost(Exception):
    """This instance no longer owns the run (it failed, was swept, or was deleted)."""


@attrs.define
class Conn:
    """Typed queries over one connection (inside a transaction when one was begun)."""

    raw: asyncpg.Connection
    # how long each statement may take (None: the pool's command timeout)
    timeout: float | None = None

    async def _execute(self, name: str, *args: Any) -> None:
        await self.raw.execute(queries()[name], *args, timeout=self.timeout)

    async def _fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.raw.fetchrow(
            queries()[name], *args, timeout=self.timeout
        )
        return row

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.raw.fetch(
            queries()[name], *args, timeout=self.timeout
        )
        return rows

    async def _fetchval(self, name: str, *args: Any) -> Any:
        return await self.raw.fetchval(queries()[name], *args, timeout=self.timeout)

    async def lock_user(self, user_id: uuid.UUID, wait_s: float | None = None) -> None:
        """Takes the user's lock until commit. With `wait_s`, it is asked for again and
        again, each time within the statement bound, rather than waited for in one
        statement: a database that stops answering is then told from a lock held long by
        the user's other work (an upload writing its store), which is `UserBusy` after
        `wait_s`."""
        if wait_s is None:
            await self._execute("user_lock", user_id)
            return
        deadline = time.monotonic() + wait_s
        pause, most = LOCK_POLL_S
        while not await self._fetchval("user_try_lock", user_id):
            if time.monotonic() >= deadline:
                raise UserBusy(
                    "Another change to this user's documents or runs is in progress; retry shortly"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, most)

    # runs

    async def blocking_run(self, user_id: uuid.UUID) -> tuple[uuid.UUID, RunStatus] | None:
        row = await self._fetchrow("blocking_run", user_id)
        return None if row is None else (row["id"], RunStatus(row["status"]))

    async def create_run(
        self,
        run_id: uuid.UUID,
        user_id: uuid.UUID,
        questions_per_chunk: int,
        auto_train: bool,
        owner: str,
        lease_s: float,
        reuse_from: uuid.UUID | None = None,
    ) -> Run:
        row = await self._fetchrow(
            "create_run",
            run_id,
            user_id,
            questions_per_chunk,
            auto_train,
            owner,
            lease_s,
            reuse_from,
        )
        assert row is not None
        return _run(row)

    async def reuse_source(self, user_id: uuid.UUID, questions_per_chunk: int) -> uuid.UUID | None:
        value: uuid.UUID | None = await self._fetchval("reuse_source", user_id, questions_per_chunk)
        return value

    async def reuse_pairs(self, run: Run, owner: str) -> tuple[int, int, int]:
        """Copies the reuse source's questions for the run's unchanged chunks; returns the
        run's (generated_chunks, pair_count, reused_chunks) after it."""
        assert run.reused_from is not None
        async with self.raw.transaction():
            row = await self._fetchrow(
                "reuse_pairs",
                run.id,
                run.reused_from,
                run.user_id,
                run.chunk_id_max,
                run.questions_per_chunk,
                owner,
            )
            if row is None:
                raise LeaseLost(f"run {run.id} is no longer generating on this instance")
        return row["generated_chunks"], row["pair_count"], row["reused_chunks"]

    async def generation_estimate(
        self, user_id: uuid.UUID, source: uuid.UUID | None
    ) -> tuple[int, int, int]:
        """(the user's chunks, those a run copying `source` would reuse, the characters of
        the others' texts)."""
        row = await self._fetchrow("generation_estimate", user_id, source)
        assert row is not None
        return row["chunks"], row["reusable"], row["new_chars"]

    async def generation_estimate_sample(
        self, user_id: uuid.UUID, source: uuid.UUID | None, limit: int
    ) -> list[str]:
        """The texts of at most `limit` of the chunks a generate would send to the LLM,
        spread over the corpus."""
        rows = await self._fetch("generation_estimate_sample", user_id, source, limit)
        return [row["text"] for row in rows]

    async def calls_per_new_chunk(self, user_id: uuid.UUID) -> float | None:
        value: float | None = await self._fetchval("calls_per_new_chunk", user_id)
        return value

    async def seconds_per_llm_call(self, user_id: uuid.UUID) -> float | None:
        value: float | None = await self._fetchval("seconds_per_llm_call", user_id)
        return value

    async def get_run(
        self, run_id: uuid.UUID, user_id: uuid.UUID, *, for_update: bool = False
    ) -> Run | None:
        name = "get_run_for_update" if for_update else "get_run"
        row = await self._fetchrow(name, run_id, user_id)
        return None if row is None else _run(row)

    async def list_runs(self, user_id: uuid.UUID, limit: int) -> list[RunListing]:
        rows = await self._fetch("list_runs", user_id, limit)
        return [RunListing(_run(r), r["latest_job_id"]) for r in rows]

    async def latest_job_id(self, run_id: uuid.UUID) -> uuid.UUID | None:
        value: uuid.UUID | None = await self._fetchval("latest_job_id", run_id)
        return value

    async def resume_run(self, run: Run, to: RunStatus, owner: str, lease_s: float) -> Run:
        row = await self._fetchrow(
            "resume_run", run.id, run.user_id, to, owner, lease_s, run.status
        )
        assert row is not None, "resume_run runs under the user lock with the row locked"
        return _run(row)

    async def start_training(self, run: Run, owner: str, lease_s: float) -> Run:
        row = await self._fetchrow("start_training", run.id, run.user_id, owner, lease_s)
        assert row is not None, "start_training runs under the user lock with the row locked"
        return _run(row)

    async def count_pairs(self, run_id: uuid.UUID) -> int:
        value: int = await self._fetchval("count_pairs", run_id)
        return value

    async def delete_run(self, run_id: uuid.UUID, user_id: uuid.UUID) -> None:
        await self._execute("delete_run", run_id, user_id)

    async def finish_generation(self, run_id: uuid.UUID, owner: str) -> Run | None:
        row = await self._fetchrow("finish_generation", run_id, owner)
        return None if row is None else _run(row)

    async def fail_run(
        self, run_id: uuid.UUID, from_status: RunStatus, to: RunStatus, message: str, owner: str
    ) -> Run | None:
        row = await self._fetchrow("fail_run", run_id, to, message, from_status, owner)
        return None if row is None else _run(row)

    async def complete_run(
        self, run_id: uuid.UUID, owner: str, metrics: dict[str, Any]
    ) -> Run | None:
        row = await self._fetchrow("complete_run", run_id, owner, metrics)
        return None if row is None else _run(row)

    async def renew_leases(
        self, owner: str, lease_s: float, run_ids: Sequence[uuid.UUID]
    ) -> list[uuid.UUID]:
        """Renews the leases; returns the runs among them a user asked to cancel."""
        rows = await self._fetch("renew_leases", owner, lease_s, list(run_ids))
        return [r["id"] for r in rows if r["cancel_requested"]]

    async def request_cancel(self, run_id: uuid.UUID, origin: str) -> tuple[str | None, bool]:
        """Marks a running run for cancelling and notifies every instance; returns (the
        instance holding its lease, whether that lease has expired)."""
        row = await self._fetchrow("request_cancel", run_id, origin)
        assert row is not None, "request_cancel runs under the user lock on a running run"
        return row["lease_owner"], row["lease_expired"]

    async def expire_leases(self, message: str) -> list[Run]:
        return [_run(r) for r in await self._fetch("expire_leases", message)]

    async def release_leases(self, owner: str, message: str) -> list[Run]:
        return [_run(r) for r in await self._fetch("release_leases", owner, message)]

    async def run_counts(self) -> dict[str, int]:
        return {r["status"]: r["count"] for r in await self._fetch("run_counts")}

    # pairs and chunks

    async def uncovered_chunks(self, run: Run, after_id: int, limit: int) -> list[Chunk]:
        rows = await self._fetch(
            "uncovered_chunks", run.user_id, run.chunk_id_max, after_id, run.id, limit
        )
        return [Chunk(r["id"], r["text"]) for r in rows]

    async def insert_pairs(
        self,
        run_id: uuid.UUID,
        job_id: uuid.UUID,
        pairs: Sequence[Pair],
        owner: str,
        job_spent: Spent = NOTHING_SPENT,
        run_spent: Spent = NOTHING_SPENT,
        run_checked: Checked = NOTHING_CHECKED,
    ) -> tuple[int, int]:
        """Stores a batch, and what the job and the run have spent at the LLM so far and
        what the question checks did in the run (totals, not increments, so a retry after a
        lost reply counts nothing twice); returns the run's (generated_chunks, pair_count)
        after it.

        The CTEs write even when the run is no longer ours; raising inside the transaction
        rolls them back, so a swept or deleted run never gains pairs here.
        """
        async with self.raw.transaction():
            row = await self._fetchrow(
                "insert_pairs",
                run_id,
                [p.chunk_id for p in pairs],
                [p.question_index for p in pairs],
                [p.question for p in pairs],
                owner,
                job_id,
                *job_spent.as_tuple(),
                *run_spent.as_tuple(),
                run_checked.rejections,
                run_checked.reasks,
                run_checked.short_chunks,
            )
            if row is None:
                raise LeaseLost(f"run {run_id} is no longer generating on this instance")
        return row["generated_chunks"], row["pair_count"]

    async def chunk_position(self, user_id: uuid.UUID, chunk_id: int) -> int:
        """1 for the user's first chunk, and so on (a run's chunks go in id order)."""
        value: int = await self._fetchval("chunk_position", user_id, chunk_id)
        return value

    async def run_pairs(self, run_id: uuid.UUID) -> list[tuple[int, str]]:
        return [(r["chunk_id"], r["question"]) for r in await self._fetch("run_pairs", run_id)]

    async def run_questions_page(
        self, run_id: uuid.UUID, after: tuple[int, int], limit: int
    ) -> list[tuple[int, int, str]]:
        """The run's (chunk_id, question_index, question) after `after`, in that order."""
        rows = await self._fetch("run_questions_page", run_id, *after, limit)
        return [(r["chunk_id"], r["question_index"], r["question"]) for r in rows]

    async def distinct_pair_chunks(self, run_id: uuid.UUID) -> int:
        value: int = await self._fetchval("distinct_pair_chunks", run_id)
        return value

    async def pairs_per_snapshot_chunk(self, run_id: uuid.UUID) -> list[int]:
        """The pair count of each chunk of the run's snapshot (0 for one without pairs)."""
        return [r["n"] for r in await self._fetch("pairs_per_snapshot_chunk", run_id)]

    async def chunk_ids(self, n: int) -> list[int]:
        """`n` ids for new chunks, ascending (above every id taken before), for
        `add_documents`: known before the chunks are inserted, they may be written to the
        store while the catalog inserts."""
        if n == 0:
            return []
        return sorted(r["id"] for r in await self._fetch("next_chunk_ids", n))

    async def add_documents(
        self,
        user_id: uuid.UUID,
        documents: Sequence[tuple[str | None, Sequence[str], bytes]],
        document_ids: Sequence[uuid.UUID],
        chunk_ids: Sequence[int],
    ) -> None:
        """Documents given as (title, chunk texts, digest), with their ids and their
        chunks' (`chunk_ids`, in order), in two round trips."""
        await self._execute(
            "insert_documents",
            user_id,
            list(document_ids),
            [title for title, _, _ in documents],
            [len(texts) for _, texts, _ in documents],
            [digest for _, _, digest in documents],
        )
        owners: list[uuid.UUID] = []
        positions: list[int] = []
        texts_all: list[str] = []
        for document_id, (_, texts, _) in zip(document_ids, documents, strict=True):
            owners += [document_id] * len(texts)
            positions += range(len(texts))
            texts_all += texts
        if len(chunk_ids) != len(texts_all):
            raise ValueError(f"{len(chunk_ids)} chunk ids for {len(texts_all)} chunks")
        await self._execute("insert_chunks", user_id, list(chunk_ids), owners, positions, texts_all)

    async def corpus(self, user_id: uuid.UUID) -> Corpus | None:
        row = await self._fetchrow("get_corpus", user_id)
        if row is None:
            return None
        return Corpus(
            row["total_chunks"],
            row["store_version"],
            row["embedder"],
            row["dimension"],
            row["last_id"],
        )

    async def publish_corpus(
        self, user_id: uuid.UUID, rows: int, embedder: str, dimension: int, version: str
    ) -> None:
        await self._execute("publish_corpus", user_id, rows, embedder, dimension, version)

    async def chunk_page(self, user_id: uuid.UUID, after_id: int, limit: int) -> list[CatalogChunk]:
        rows = await self._fetch("chunk_page", user_id, after_id, limit)
        return [
            CatalogChunk(r["id"], r["text"], r["document_id"], r["position"], r["title"])
            for r in rows
        ]

    async def chunk_texts(self, user_id: uuid.UUID, ids: Sequence[int]) -> dict[int, str]:
        """The texts of the user's chunks `ids` (those that are the user's)."""
        rows = await self._fetch("chunk_texts", user_id, list(ids))
        return {int(r["id"]): str(r["text"]) for r in rows}

    async def known_digests(self, user_id: uuid.UUID, digests: Sequence[bytes]) -> set[bytes]:
        """Which of `digests` belong to documents the user already has."""
        rows = await self._fetch("documents_with_digests", user_id, list(digests))
        return {bytes(r["digest"]) for r in rows}

    async def list_documents(self, user_id: uuid.UUID, limit: int) -> list[Document]:
        rows = await self._fetch("list_documents", user_id, limit, TITLE_MAX_CHARS)
        return [
            Document(
                r["id"],
                r["title"][: TITLE_MAX_CHARS - 1] + "…" if r["cut"] else r["title"],
                r["chunk_count"],
                r["created_at"],
            )
            for r in rows
        ]

    async def document_count(self, user_id: uuid.UUID) -> int:
        value: int = await self._fetchval("document_count", user_id)
        return value

    async def total_chunks(self, user_id: uuid.UUID) -> int:
        value: int | None = await self._fetchval("total_chunks", user_id)
        return value or 0

    # jobs and events

    async def create_job(self, run_id: uuid.UUID, user_id: uuid.UUID, kind: JobKind) -> Job:
        row = await self._fetchrow("create_job", uuid.uuid4(), run_id, user_id, kind)
        assert row is not None
        return _job(row)

    async def get_job(self, job_id: uuid.UUID, user_id: uuid.UUID) -> Job | None:
        row = await self._fetchrow("get_job", job_id, user_id)
        return None if row is None else _job(row)

    async def finish_job(self, job_id: uuid.UUID, status: str) -> None:
        await self._execute("finish_job", job_id, status)

    async def running_jobs_of_run(self, run_id: uuid.UUID) -> list[uuid.UUID]:
        return [r["id"] for r in await self._fetch("running_jobs_of_run", run_id)]

    async def insert_event(
        self, job_id: uuid.UUID, event: str, data: dict[str, Any], origin: str
    ) -> int:
        row = await self._fetchrow("insert_event", job_id, event, data, origin)
        assert row is not None
        event_id: int = row["id"]
        return event_id

    async def events_after(
        self, job_id: uuid.UUID, after_id: int, limit: int = 500
    ) -> list[JobEvent]:
        return [_event(r) for r in await self._fetch("events_after", job_id, after_id, limit)]

    async def get_events(self, event_ids: list[int]) -> list[JobEvent]:
        return [_event(row) for row in await self._fetch("get_events", event_ids)]

    # settings

    async def get_settings(self, user_id: uuid.UUID) -> UserSettingsRow | None:
        row = await self._fetchrow("get_settings", user_id)
        return None if row is None else UserSettingsRow(**dict(row))

    async def record_training(
        self,
        user_id: uuid.UUID,
        run_id: uuid.UUID,
        trained_chunks: int,
        can_enable: bool,
        reason: str | None,
        metrics: dict[str, Any],
    ) -> None:
        await self._execute(
            "record_training",
            user_id,
            run_id,
            trained_chunks,
            can_enable,
            reason,
            metrics,
        )

    async def set_enabled(self, user_id: uuid.UUID, enabled: bool) -> None:
        await self._execute("set_enabled", user_id, enabled)

    # the shared LLM rate budget

    async def budget_lock(self, key: str) -> tuple[dict[str, Any], float]:
        """The budget's shared state as stored (factor, adjusted_at, hold_until,
        paused_until, rate_limited), locked until commit, and the server's clock (epoch s)."""
        row = await self._fetchrow("budget_lock", key)
        assert row is not None
        state = {name: row[name] for name in BUDGET_STATE}
        return state, float(row["now"])

    async def budget_save(self, key: str, state: dict[str, Any]) -> None:
        """Stores the budget's shared state (the columns `budget_lock` reads)."""
        await self._execute("budget_save", key, *(state[n] for n in BUDGET_STATE))

    async def budget_claim(
        self,
        key: str,
        instance_id: str,
        claims: Sequence[tuple[uuid.UUID, float]],
        ttl_s: float,
    ) -> list[tuple[str, uuid.UUID, float]]:
        """Replaces this instance's claims, (user, demand) each; returns every other
        instance's live ones as (instance, user, demand)."""
        rows = await self._fetch(
            "budget_claim",
            key,
            instance_id,
            [user for user, _ in claims],
            [demand for _, demand in claims],
            ttl_s,
        )
        return [(r["instance_id"], r["user_id"], r["demand"]) for r in rows]

    # health and schema

    async def ping(self) -> None:
        await self._fetchval("ping")

    @asynccontextmanager
    async def migration_lock(self) -> AsyncIterator[None]:
        """Held while migrating: every instance that migrates at once takes the same lock."""
        await self._execute("migration_lock", MIGRATION_LOCK)
        try:
            yield
        finally:
            await self._execute("migration_unlock", MIGRATION_LOCK)

    async def applied_migrations(self) -> set[int]:
        await self._execute("create_migrations_table")
        return {r["version"] for r in await self._fetch("applied_migrations")}

    async def apply_migration(self, version: int, name: str, sql: str) -> None:
        """The migration and its record, in one transaction."""
        async with self.raw.transaction():
            await self.raw.execute(sql)
            await self._execute("record_migration", version, name)


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[Conn]:
    """A connection of its own, outside any pool (migrations, one-off tools); one that
    cannot be made is DatabaseUnreachable."""
    try:
        raw = await asyncpg.connect(url, timeout=10)
    except _CONNECT_ERRORS as exc:
        raise _unreachable(url, exc) from exc
    try:
        yield Conn(raw)
    finally:
        await raw.close()


@attrs.define
class Notifications:
    """NOTIFY payloads of one channel, received on a connection of their own."""

    _raw: asyncpg.Connection
    check_s: float
    _pending: asyncio.Queue[str] = attrs.field(factory=asyncio.Queue)

    def _received(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._pending.put_nowait(payload)

    async def batch(self) -> list[str]:
        """Every payload received since the last batch, at least one. While none comes, the
        connection is asked something every `check_s`: a dead one says nothing otherwise,
        and its loss is raised here."""
        while True:
            try:
                # not wait_for, which on Python 3.11 can lose the cancel that ends the listener
                async with asyncio.timeout(self.check_s):
                    first = await self._pending.get()
            except TimeoutError:
                await self._raw.fetchval(queries()["ping"], timeout=self.check_s)
                continue
            payloads = [first]
            while not self._pending.empty():
                payloads.append(self._pending.get_nowait())
            return payloads


# what leaves a connection unfit to reuse: a loss, a statement without its answer in time,
# a cancel in the middle of a statement
_CUT_ON: tuple[type[BaseException], ...] = (*UNAVAILABLE, TimeoutError, asyncio.CancelledError)


def _cut(raw: asyncpg.Connection) -> None:
    """Closes a connection at once, so that the pool replaces it instead of reusing it.
    asyncpg may have seen it close and given it back to the pool already: then there is
    nothing left to cut."""
    with contextlib.suppress(asyncpg.InterfaceError):
        raw.terminate()


@asynccontextmanager
async def _discarded_if_broken(raw: asyncpg.Connection) -> AsyncIterator[None]:
    """A connection that failed as if dead, whose statement ran out of time, or that was
    cancelled in the middle of one is cut: asyncpg would otherwise wait for a cancel
    request (sent over a new connection, to a server that may not answer) before reusing
    it, and a dead one would fail its next user."""
    try:
        yield
    except _CUT_ON:
        _cut(raw)
        raise


async def _roll_back(raw: asyncpg.Connection, transaction: Any, within_s: float | None) -> None:
    """Rolls the transaction back; a connection that cannot (it failed, or does not answer
    in time) is cut instead, which rolls it back on the server, and the error that ended
    the transaction is the one raised, not the rollback's."""
    try:
        async with asyncio.timeout(within_s):
            await transaction.rollback()
    except Exception:
        # cut already (then asyncpg says so with an InterfaceError), or cut now
        _cut(raw)


@attrs.define
class Database:
    """A pool, and how long its users wait on it (`Waits`): a run's work waits an outage
    out; `bounded` gives a request's bounds."""

    pool: asyncpg.Pool
    url: str = attrs.field(repr=False)
    waits: Waits = PATIENT

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 2, max_size: int = 10) -> Database:
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                # a dead server must surface as an error, not a hang
                timeout=10,
                command_timeout=60,
            )
        except _CONNECT_ERRORS as exc:
            raise _unreachable(url, exc) from exc
        return cls(pool, url)

    def bounded(self, waits: Waits) -> Database:
        """This database, its users waiting at most `waits` (on the same pool: closing
        either closes it)."""
        return attrs.evolve(self, waits=waits)

    async def close(self) -> None:
        """Closes the pool; connections still checked out after `CLOSE_S` (work left running
        at shutdown holds them) are cut, not waited for: asyncpg would wait for ever."""
        try:
            async with asyncio.timeout(CLOSE_S):
                await self.pool.close()
        except TimeoutError:
            log.warning("database connections still in use at close; cutting them", seconds=CLOSE_S)
            self.pool.terminate()

    @asynccontextmanager
    async def _checked_out(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool, for as long as the block runs; a wait beyond the
        bounds (for the connection, a statement, or the connection's reset on its way
        back) is `DatabaseNotAnswering`."""
        waits = self.waits
        try:
            async with self.pool.acquire(timeout=waits.acquire_s) as raw, _discarded_if_broken(raw):
                yield raw
        except TimeoutError as exc:
            raise DatabaseNotAnswering(
                f"no answer within the bounds (a connection {waits.acquire_s} s, "
                f"a statement {waits.statement_s} s)"
            ) from exc

    @asynccontextmanager
    async def conn(self) -> AsyncIterator[Conn]:
        async with self._checked_out() as raw:
            yield Conn(raw, self.waits.statement_s)

    async def read(self, query: Callable[[Conn], Awaitable[T]]) -> T:
        """`query` on a connection of its own, run again while the database is unavailable
        (a dropped connection, a restart): for reads only, which are safe to repeat. With
        bounds, the tries in all take at most the statement bound."""

        async def once() -> T:
            async with self.conn() as conn:
                return await query(conn)

        within_s = self.waits.statement_s
        try:
            async with asyncio.timeout(within_s):
                return await retrying(once, errors=UNAVAILABLE)
        except TimeoutError as exc:
            raise DatabaseNotAnswering(f"a read got no answer within {within_s} s") from exc

    @asynccontextmanager
    async def tx(self, *, lock_user: uuid.UUID | None = None) -> AsyncIterator[Conn]:
        """A transaction; with `lock_user`, holding that user's advisory lock until commit.
        BEGIN and COMMIT are statements like the others: within the statement bound."""
        within_s = self.waits.statement_s
        async with self._checked_out() as raw:
            transaction = raw.transaction()
            async with asyncio.timeout(within_s):
                await transaction.start()
            conn = Conn(raw, within_s)
            try:
                if lock_user is not None:
                    await conn.lock_user(lock_user, self.waits.lock_s)
                yield conn
            except BaseException:
                await _roll_back(raw, transaction, within_s)
                raise
            async with asyncio.timeout(within_s):
                await transaction.commit()

    async def ping(self, within_s: float) -> None:
        """Returns once the database answers a query, within `within_s` in all (a free
        connection included); else `DatabaseNotAnswering`, or the error of one that is down."""
        try:
            async with asyncio.timeout(within_s):
                async with self.bounded(Waits(within_s, within_s)).conn() as conn:
                    await conn.ping()
        except TimeoutError as exc:
            raise DatabaseNotAnswering(f"no answer to a ping within {within_s:g} s") from exc

    @asynccontextmanager
    async def listening(self, channel: str, check_s: float) -> AsyncIterator[Notifications]:
        """LISTEN on `channel` over a connection of its own, closed when the block ends."""
        raw: asyncpg.Connection = await asyncpg.connect(self.url, timeout=10)
        try:
            notifications = Notifications(raw, check_s)
            await raw.add_listener(channel, notifications._received)
            yield notifications
        finally:
            await asyncio.shield(raw.close(timeout=2))
