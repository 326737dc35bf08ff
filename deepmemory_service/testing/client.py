"""A running instance's HTTP API as the tests and the benchmarks call it: its base URL and
service token, JSON back with the status; a run read and waited on; a condition polled until
it holds; a free loopback port to start an instance (or a stand-in) on."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import attrs

T = TypeVar("T")


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _gave_up(value: object) -> str:
    return f"gave up waiting; last: {value!r}"


async def poll(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    failure: Callable[[T], str] = _gave_up,
    within: float | None = 30.0,
    every: float = 0.02,
) -> T:
    """Calls `probe` every `every` seconds until `done` holds for what it returns, and
    returns that; fails (AssertionError) with `failure(last value)` once `within` seconds
    have passed (None: waits as long as it takes)."""
    deadline = None if within is None else time.monotonic() + within
    while True:
        value = await probe()
        if done(value):
            return value
        if deadline is not None and time.monotonic() >= deadline:
            raise AssertionError(failure(value))
        await asyncio.sleep(every)


@attrs.define
class Api:
    """Calls to one running instance's `/v1/api`, with its service token."""

    # the instance's root, e.g. http://127.0.0.1:8080
    url: str
    token: str
    # sent with every call besides the token (an admin token, say)
    headers: dict[str, str] = attrs.field(factory=dict)
    # a session to share between calls; without one, each call has its own
    http: aiohttp.ClientSession | None = None
    # how often `until` asks for the run
    every: float = 0.02

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """(status, JSON body) of `method` on `/v1/api` + `path`; `kwargs` as aiohttp's."""
        headers = {
            "Authorization": f"Bearer {self.token}",
            **self.headers,
            **kwargs.pop("headers", {}),
        }
        url = f"{self.url}/v1/api{path}"
        if self.http is not None:
            async with self.http.request(method, url, headers=headers, **kwargs) as resp:
                return resp.status, await resp.json()
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, url, headers=headers, **kwargs) as resp,
        ):
            return resp.status, await resp.json()

    async def run(self, user: uuid.UUID, run_id: str) -> dict[str, Any]:
        """The user's run, as `GET /deep-memory/runs/{id}` shows it."""
        code, run = await self.call(
            "GET", f"/deep-memory/runs/{run_id}", params={"user_id": str(user)}
        )
        assert code == 200, run
        return dict(run)

    async def until(
        self, user: uuid.UUID, run_id: str, *statuses: str, within: float | None = 60.0
    ) -> dict[str, Any]:
        """The run once its status is one of `statuses`; fails after `within` seconds
        (None: waits as long as it takes)."""
        return await poll(
            lambda: self.run(user, run_id),
            lambda run: run["status"] in statuses,
            lambda run: f"run stayed {run['status']}",
            within,
            self.every,
        )
