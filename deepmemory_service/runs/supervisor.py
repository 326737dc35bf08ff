"""One actor per user: commands go through its inbox one at a time; work runs beside it.

The inbox serialises a user's generate / proceed / delete / train inside this process, so
status checks and the one-unfinished-run rule cannot race here; the advisory lock and the
partial unique index keep them across processes. A command's reply goes back through its
future. Work (generation, training) runs as the supervisor's current task, so the inbox
stays responsive while a run is going.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import structlog

from deepmemory_service.errors import Busy
from deepmemory_service.platform.stopping import cancel_all

if TYPE_CHECKING:
    from deepmemory_service.llm.rate_budget import Lane
    from deepmemory_service.runs.questioning import Asker

log = structlog.get_logger(__name__)

T = TypeVar("T")


@attrs.define
class Command:
    name: str
    handler: Callable[[RunSupervisor], Awaitable[Any]]
    reply: asyncio.Future[Any]
    # the caller's log context (request id...), bound while the command runs
    log_context: dict[str, Any] = attrs.field(factory=dict)


@attrs.define(eq=False)
class WorkStatus:
    """What a supervisor's current work is doing. The work updates it; the debug endpoint and
    `/metrics` read it; it goes with the work (the supervisor drops it when the work ends)."""

    run_id: uuid.UUID
    job_id: uuid.UUID
    # the run's status while this work runs (generating, then training for an auto_train run)
    status: str
    workers_busy: int = 0
    # the run's seat at the LLM rate budget, while it generates
    lane: Lane | None = None
    # a user asked the work to stop (the work watches it and stops at once)
    cancelled: asyncio.Event = attrs.field(factory=asyncio.Event)
    # the checks of an LLM's questions, while it generates (None: not checked)
    asker: Asker | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def snapshot(self) -> dict[str, Any]:
        lane = self.lane
        return {
            "current_run_id": str(self.run_id),
            "current_job_id": str(self.job_id),
            "current_status": self.status,
            "workers_busy": self.workers_busy,
            "cancel_requested": self.cancelled.is_set(),
            "calls_waiting": lane.waiting if lane and not lane.closed else 0,
            "llm_calls": lane.calls if lane else 0,
            "prompt_tokens": lane.prompt_tokens if lane else 0,
            "completion_tokens": lane.completion_tokens if lane else 0,
            **_checks_view(self.asker),
        }


def _checks_view(asker: Asker | None) -> dict[str, Any]:
    """What the question checks did in this work (none when they are off)."""
    tally = asker.tally if asker is not None else None
    return {
        "question_rejections": dict(tally.rejections) if tally else {},
        "question_reasks": tally.reasks if tally else 0,
        "short_chunks": tally.short_chunks if tally else 0,
        "spare_questions_unused": tally.spares_unused if tally else 0,
    }


IDLE: dict[str, Any] = {
    "current_run_id": None,
    "current_job_id": None,
    "current_status": None,
    "workers_busy": 0,
    "cancel_requested": False,
    "calls_waiting": 0,
    "llm_calls": 0,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    **_checks_view(None),
}


@attrs.define(eq=False)
class RunSupervisor:
    user_id: uuid.UUID
    registry: SupervisorRegistry
    inbox: asyncio.Queue[Command]
    work: WorkStatus | None = None
    commands_handled: int = 0
    last_error: str | None = None
    _task: asyncio.Task[None] | None = None
    # the current work's task (`work` is what it reports)
    _work: asyncio.Task[None] | None = attrs.field(default=None, init=False)
    _last_active: float = attrs.field(factory=time.monotonic)
    stopped: bool = False

    def start(self) -> None:
        # a context of its own: not the one of the request that happened to create it
        self._task = asyncio.create_task(
            self._loop(), name=f"supervisor:{self.user_id}", context=contextvars.Context()
        )

    async def ask(self, name: str, handler: Callable[[RunSupervisor], Awaitable[T]]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            self.inbox.put_nowait(
                Command(name, handler, future, structlog.contextvars.get_contextvars())
            )
        except asyncio.QueueFull:
            raise Busy("Too many pending commands for this user; retry shortly") from None
        return await future

    @property
    def working(self) -> bool:
        return self._work is not None and not self._work.done()

    def start_work(
        self,
        run_id: uuid.UUID,
        job_id: uuid.UUID,
        run_status: str,
        work: Callable[[WorkStatus], Coroutine[Any, Any, None]],
    ) -> WorkStatus:
        """Runs `work(reported)` as this user's current task, where `reported` is the
        `WorkStatus` the work reports through (its run in `run_status` to begin with). A
        user's work never overlaps: the run rule lets a command start a run as soon as the
        last run's status is written, which its work does before its last event and its
        job's end, so the new work waits for that tail."""
        previous = self._work if self.working else None
        self.work = WorkStatus(run_id, job_id, run_status)
        self._work = asyncio.create_task(
            self._guard(self._after(previous, work, self.work), self.work), name=f"run:{run_id}"
        )
        return self.work

    @staticmethod
    async def _after(
        previous: asyncio.Task[None] | None,
        work: Callable[[WorkStatus], Coroutine[Any, Any, None]],
        status: WorkStatus,
    ) -> None:
        if previous is not None:
            try:
                await asyncio.shield(previous)
            except asyncio.CancelledError:
                if not previous.done():
                    # this work is cancelled (shutdown) while waiting: the tail goes with it
                    previous.cancel()
                    await asyncio.wait([previous])
                    raise
        await work(status)

    async def _guard(self, work: Coroutine[Any, Any, None], status: WorkStatus) -> None:
        structlog.contextvars.bind_contextvars(user_id=str(self.user_id), run_id=str(status.run_id))
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # the work functions turn their failures into run statuses; this is a bug
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("run work crashed")
        finally:
            if self.work is status:
                self.work = None
            self._last_active = time.monotonic()

    async def wait_idle(self) -> None:
        """Until the current work, if any, is over (tests, a cancel). The work's own end,
        however it ends, is not raised here; a cancel of the waiter is."""
        if self._work is not None:
            await asyncio.wait([self._work])

    async def _loop(self) -> None:
        idle_s = self.registry.idle_s
        while True:
            try:
                # not wait_for, which on Python 3.11 can lose the cancel of stop()
                async with asyncio.timeout(idle_s):
                    command = await self.inbox.get()
            except TimeoutError:
                if (
                    self.inbox.empty()
                    and not self.working
                    and time.monotonic() - self._last_active >= idle_s
                ):
                    # no await between this check and leaving the registry: a command
                    # for this user now goes to a new supervisor
                    self.registry._forget(self)
                    self.stopped = True
                    return
                continue
            await self._handle(command)

    async def _handle(self, command: Command) -> None:
        self._last_active = time.monotonic()
        self.commands_handled += 1
        if command.reply.cancelled():
            return
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            **{**command.log_context, "user_id": str(self.user_id), "command": command.name}
        )
        try:
            result = await command.handler(self)
        except Exception as exc:
            if not command.reply.done():
                command.reply.set_exception(exc)
        else:
            if not command.reply.done():
                command.reply.set_result(result)
        finally:
            structlog.contextvars.unbind_contextvars("command")

    async def stop(self) -> None:
        """Cancels the inbox loop and the current work, then waits for both."""
        self.stopped = True
        await cancel_all(
            [t for t in (self._task, self._work) if t is not None], f"supervisor {self.user_id}"
        )
        while not self.inbox.empty():
            command = self.inbox.get_nowait()
            if not command.reply.done():
                command.reply.set_exception(Busy("The service is shutting down"))

    def snapshot(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user_id),
            "inbox_depth": self.inbox.qsize(),
            **(self.work.snapshot() if self.work is not None else IDLE),
            "working": self.working,
            "commands_handled": self.commands_handled,
            "subscribers": self.registry.subscribers_for(self),
            "last_error": self.last_error,
        }

    def __repr__(self) -> str:
        work = self.work
        doing = (
            f"run={work.run_id} status={work.status} busy={work.workers_busy}" if work else "idle"
        )
        return f"<RunSupervisor user={self.user_id} inbox={self.inbox.qsize()} {doing}>"


@attrs.define
class SupervisorRegistry:
    idle_s: float
    inbox_size: int
    subscribers_for: Callable[[RunSupervisor], int] = lambda _: 0
    _supervisors: dict[uuid.UUID, RunSupervisor] = attrs.field(factory=dict)
    closed: bool = False

    def get(self, user_id: uuid.UUID) -> RunSupervisor:
        if self.closed:
            raise Busy("The service is shutting down")
        sup = self._supervisors.get(user_id)
        if sup is None:
            sup = RunSupervisor(user_id, self, asyncio.Queue(self.inbox_size))
            self._supervisors[user_id] = sup
            sup.start()
        return sup

    async def ask(
        self, user_id: uuid.UUID, name: str, handler: Callable[[RunSupervisor], Awaitable[T]]
    ) -> T:
        return await self.get(user_id).ask(name, handler)

    def _forget(self, sup: RunSupervisor) -> None:
        if self._supervisors.get(sup.user_id) is sup:
            del self._supervisors[sup.user_id]

    def find(self, user_id: uuid.UUID) -> RunSupervisor | None:
        return self._supervisors.get(user_id)

    def all(self) -> list[RunSupervisor]:
        return list(self._supervisors.values())

    def cancel_run(self, run_id: uuid.UUID) -> bool:
        """Asks the work of `run_id` to stop, if it runs here; says whether it does."""
        for sup in self._supervisors.values():
            if sup.working and sup.work is not None and sup.work.run_id == run_id:
                sup.work.cancel()
                return True
        return False

    def working_runs(self) -> list[uuid.UUID]:
        """The runs whose work is alive in this process."""
        return [
            s.work.run_id for s in self._supervisors.values() if s.working and s.work is not None
        ]

    async def stop(self) -> None:
        self.closed = True
        sups = list(self._supervisors.values())
        self._supervisors.clear()
        await asyncio.gather(*(s.stop() for s in sups))

    def snapshot(self) -> dict[str, Any]:
        sups = self.all()
        return {
            "supervisors": [s.snapshot() for s in sups],
            "count": len(sups),
            "working": sum(1 for s in sups if s.working),
        }

    def __repr__(self) -> str:
        return f"<SupervisorRegistry supervisors={len(self._supervisors)}>"
