"""An S3-compatible server for the tests of s3:// stores, started by the suite itself: moto in
server mode in a process of its own, once per session (it starts in about a second), with a
new bucket per test; and a proxy in front of it that lets a test act at an exact request
(a pytest plugin of conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import attrs
import pytest

from deepmemory_service.testing.object_store import ObjectStoreServer


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ObjectStoreServer]:
    with ObjectStoreServer() as server:
        yield server


@pytest.fixture
def s3(
    s3_server: ObjectStoreServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ObjectStoreServer]:
    """The server, which this process's AWS SDK reaches through its standard variables
    for the test; running again after the test whatever it paused."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        yield s3_server
    finally:
        s3_server.resume()


@pytest.fixture
def bucket(s3: ObjectStoreServer) -> str:
    return s3.bucket()


@attrs.define
class Trap:
    """What `RequestProxy` does at the `nth` request that `matches` (method, path) from the
    time it is set: `act()`, holding the request back (it never reaches the server), or
    once the server answers it."""

    matches: Callable[[str, str], bool]
    nth: int
    act: Callable[[], None]
    hold: bool
    seen: int = 0
    sprung: asyncio.Event = attrs.field(factory=asyncio.Event)


@attrs.define
class RequestProxy:
    """A loopback proxy in front of the S3 server that reads the HTTP requests going through
    it (their method and path), so that a test can act at an exact request of a process
    it stands before: `trap(...)`, then `await trap.sprung.wait()`."""

    upstream: int
    port: int = 0
    requests: list[tuple[str, str]] = attrs.field(factory=list)
    _trap: Trap | None = None
    _server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def trap(
        self, matches: Callable[[str, str], bool], nth: int, act: Callable[[], None], *, hold: bool
    ) -> Trap:
        self._trap = Trap(matches, nth, act, hold)
        return self._trap

    async def start(self) -> RequestProxy:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        answered: list[Trap] = []  # traps to spring once the server answers

        async def requests() -> None:
            pending = b""
            body_left = 0
            while data := await reader.read(65536):
                pending += data
                out = b""
                while pending:
                    if body_left:
                        take = pending[:body_left]
                        out, pending, body_left = (
                            out + take,
                            pending[len(take) :],
                            body_left - len(take),
                        )
                        continue
                    end = pending.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, pending = pending[: end + 4], pending[end + 4 :]
                    method, path = head.split(b" ", 2)[:2]
                    self.requests.append((method.decode(), path.decode()))
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            body_left = int(value)
                    trap = self._trap
                    if trap is not None and trap.matches(*self.requests[-1]):
                        trap.seen += 1
                        if trap.seen == trap.nth:
                            self._trap = None
                            if trap.hold:
                                up_writer.write(out)
                                trap.act()
                                trap.sprung.set()
                                return  # nothing more of this connection reaches the server
                            answered.append(trap)
                    out += head
                up_writer.write(out)
                await up_writer.drain()

        async def answers() -> None:
            while data := await up_reader.read(65536):
                # an interim "100 Continue" is not the answer
                while answered and not data.startswith(b"HTTP/1.1 100"):
                    trap = answered.pop()
                    trap.act()
                    trap.sprung.set()
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(requests(), answers())
        except (ConnectionError, ValueError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()


@pytest.fixture
async def s3_proxy(s3: ObjectStoreServer) -> AsyncIterator[RequestProxy]:
    proxy = await RequestProxy(s3.port).start()
    try:
        yield proxy
    finally:
        await proxy.stop()
