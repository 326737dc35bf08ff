"""The gateway (the spec's proxy layer): authenticates the user, injects `user_id` from the
identity (never from the request), and forwards to the backend with the service token.
Backend statuses and bodies pass through unchanged. Its pages for people are `login.py`.

One user's load never delays another's calls: streams and calls have connection pools of
their own, without a total to fill, and each user's share of them is bounded
(`fairness.py`). A request whose client has left is dropped quietly: no backend stream is
opened for it, and nothing is written to a connection that is gone.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from deepmemory_service.api.endpoint import Endpoint, Handler
from deepmemory_service.api.keys import BACKEND_CLIENT, BACKEND_STREAMS, SETTINGS
from deepmemory_service.api.payloads import (
    last_event_id,
    parse_uuid,
    read_json_object,
    read_upload,
)
from deepmemory_service.api.routes import ENDPOINTS
from deepmemory_service.api.sse import CLIENT_LEFT, client_connected
from deepmemory_service.errors import BadGateway, InvalidInput
from deepmemory_service.gateway import auth, login
from deepmemory_service.gateway.fairness import USER_LIMITS, UserLimits
from deepmemory_service.gateway.forwarded import TRUSTED_PROXIES, forwarded, networks
from deepmemory_service.platform.config import Settings

log = structlog.get_logger(__name__)

CALL_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=5)
# a stream lasts as long as its job: only connecting is bounded
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
CLIENT_POLL_S = 0.5
T = TypeVar("T")


def _backend_base(request: web.Request) -> URL:
    configured = request.app[SETTINGS].http.backend_url
    if configured:
        return URL(configured)
    # one process: the socket this request came in on, never the Host header (a spoofed
    # Host would send the service token elsewhere)
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport else None
    if not sockname:
        raise BadGateway("Backend unavailable: cannot tell this server's own address")
    host, port = sockname[0], sockname[1]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104  # mapped, not bound
    return URL.build(scheme="http", host=host, port=port)


def _headers(request: web.Request) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {request.app[SETTINGS].service_token}"}
    request_id = request.headers.get("X-Request-ID")
    if request_id:
        headers["X-Request-ID"] = request_id[:64]
    return headers


def _user(request: web.Request) -> uuid.UUID:
    identity = auth.identify(request, request.app[SETTINGS])
    structlog.contextvars.bind_contextvars(user_id=str(identity.user_id))
    return identity.user_id


async def _forward(
    request: web.Request,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    query: Mapping[str, str] | None = None,
    data: bytes | None = None,
) -> web.Response:
    url = _backend_base(request).with_path(f"/v1/api{path}").with_query(query or {})
    session = request.app[BACKEND_CLIENT]
    if not client_connected(request):
        log.info("call not forwarded: the client left")
        return web.Response(status=CLIENT_LEFT)
    headers = _headers(request)
    if data is not None:
        headers["Content-Type"] = "application/octet-stream"
    try:
        async with session.request(
            method, url, json=body, data=data, headers=headers, timeout=CALL_TIMEOUT
        ) as upstream:
            payload = await upstream.read()
            return _passed(upstream, payload)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _unavailable(exc) from None


def _passed(upstream: aiohttp.ClientResponse, payload: bytes) -> web.Response:
    """The backend's reply as the client gets it: status, body and content type, and when a
    busy backend says when to come back, that too."""
    passed = {k: v for k, v in upstream.headers.items() if k.lower() == "retry-after"}
    return web.Response(
        body=payload, status=upstream.status, content_type=upstream.content_type, headers=passed
    )


def _unavailable(exc: BaseException) -> BadGateway:
    log.warning("backend call failed", error=type(exc).__name__)
    if isinstance(exc, TimeoutError):
        reason = "no reply in time"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        reason = "cannot connect"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        reason = "the connection closed before a reply"
    else:
        reason = type(exc).__name__
    return BadGateway(f"Backend unavailable: {reason}")


def _forwarder(endpoint: Endpoint) -> Handler:
    """The gateway's handler for `endpoint`: the client's query or JSON body (only the
    fields `public.only` names, when it does), with `user_id` from the identity alone, to
    the backend path with the client's path parameters (each one a UUID)."""
    assert endpoint.public is not None
    public = endpoint.public
    names = [p.name for p in endpoint.params if p.where == "path"]
    public_names = re.findall(r"{(\w+)}", public.path)

    async def handler(request: web.Request) -> web.Response:
        user_id = _user(request)
        with request.app[USER_LIMITS].calls.holding(user_id):
            return await forward(request, user_id)

    async def forward(request: web.Request, user_id: uuid.UUID) -> web.Response:
        path = endpoint.path
        for name, public_name in zip(names, public_names, strict=True):
            value = parse_uuid(public_name, request.match_info[public_name])
            path = path.replace(f"{{{name}}}", str(value))
        if endpoint.body is None:
            query = {k: v for k, v in request.query.items() if k != "user_id"}
            query["user_id"] = str(user_id)
            # an upload's body is a file's bytes, passed on as they came (decoded)
            data = (
                await read_upload(request, request.app[SETTINGS].uploads.max_file_bytes)
                if endpoint.upload
                else None
            )
            return await _forward(request, endpoint.method, path, query=query, data=data)
        body = await read_json_object(request)
        if public.only is not None:
            missing = [name for name in public.only if name not in body]
            if missing:
                raise InvalidInput("; ".join(f"{name}: field required" for name in missing))
            body = {name: body[name] for name in public.only}
        body["user_id"] = str(user_id)
        return await _forward(request, endpoint.method, path, body=body)

    return handler


async def stream(request: web.Request) -> web.StreamResponse:
    """Streamed through as it comes, never buffered; Last-Event-ID goes upstream. At most
    `sse_streams_per_user` at once per user."""
    user_id = _user(request)
    job_id = parse_uuid("job_id", request.match_info["job_id"])
    url = (
        _backend_base(request)
        .with_path(f"/v1/api/events/stream/{job_id}")
        .with_query({"user_id": str(user_id)})
    )
    headers = _headers(request)
    if "Last-Event-ID" in request.headers:
        headers["Last-Event-ID"] = str(last_event_id(request))
    session = request.app[BACKEND_STREAMS]

    async def opened() -> aiohttp.ClientResponse:
        return await session.get(url, headers=headers, timeout=STREAM_TIMEOUT)

    with request.app[USER_LIMITS].streams.holding(user_id):
        try:
            upstream = await _unless_client_leaves(request, opened())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unavailable(exc) from None
        if upstream is None:
            log.info("event stream not opened: the client left while it waited")
            return web.Response(status=CLIENT_LEFT)
        try:
            if upstream.status != 200:
                return _passed(upstream, await upstream.read())
            down = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                }
            )
            try:
                await down.prepare(request)
            except ConnectionError:
                log.info("event stream not begun: the client left as it opened")
                return down
            await _pipe(request, upstream, down)
            return down
        finally:
            # closing (not releasing) drops the connection, so the backend sees its
            # subscriber go
            upstream.close()


async def _unless_client_leaves(request: web.Request, call: Awaitable[T]) -> T | None:
    """`call`'s result, or None as soon as the client has left (the call is cancelled, and
    a reply that came meanwhile is closed): aiohttp does not cancel a handler whose client
    left, so what it waits for must."""
    task: asyncio.Future[T] = asyncio.ensure_future(call)
    gone: asyncio.Future[None] = asyncio.ensure_future(_client_gone(request))
    either: list[asyncio.Future[Any]] = [task, gone]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)
    if client_connected(request):
        return task.result()
    if not task.cancelled() and task.exception() is None:
        reply = task.result()
        if isinstance(reply, aiohttp.ClientResponse):
            reply.close()
    return None


async def _client_gone(request: web.Request) -> None:
    """Returns once the client's connection has closed."""
    # aiohttp does not cancel a handler whose client left, and a quiet job writes nothing
    # that would fail, so look at the connection itself
    while client_connected(request):  # noqa: ASYNC110
        await asyncio.sleep(CLIENT_POLL_S)


async def _pipe(
    request: web.Request, upstream: aiohttp.ClientResponse, down: web.StreamResponse
) -> None:
    """Copies until the upstream ends or the client leaves, whichever comes first."""

    async def copy() -> None:
        try:
            async for piece in upstream.content.iter_any():
                await down.write(piece)
        except (ConnectionResetError, aiohttp.ClientPayloadError):
            pass  # one side went away: the stream is over

    tasks = {asyncio.ensure_future(copy()), asyncio.ensure_future(_client_gone(request))}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _clients(app: web.Application) -> AsyncIterator[None]:
    """The pools to the backend: calls, and streams apart (a stream holds its connection as
    long as its job runs). Neither has a total: with one, a few users' streams or calls
    made everyone else's wait; each user's share is bounded instead (`fairness.py`)."""

    def pool() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
        )

    async with pool() as calls, pool() as streams:
        app[BACKEND_CLIENT] = calls
        app[BACKEND_STREAMS] = streams
        yield


def setup_gateway(app: web.Application, settings: Settings | None = None) -> None:
    """Settings are read per request from app[SETTINGS], which create_app fills with the
    completed secrets; `settings` is only a fallback for an app that has none yet."""
    if SETTINGS not in app:
        if settings is None:
            raise ValueError("setup_gateway needs settings: app[SETTINGS] is not set")
        app[SETTINGS] = settings
    app[USER_LIMITS] = UserLimits.of(app[SETTINGS].http)
    app[TRUSTED_PROXIES] = networks(app[SETTINGS].http.trusted_proxies)
    # innermost, so that the handlers see the request as the client made it
    app.middlewares.append(forwarded)
    app.cleanup_ctx.append(_clients)
    for endpoint in ENDPOINTS:
        if endpoint.public is None:
            continue
        handler = stream if endpoint.streams else _forwarder(endpoint)
        app.router.add_route(endpoint.method, endpoint.public.path, handler)
    app.add_routes(login.routes)
