"""The HTTP connection's own replies, for requests aiohttp's parser refuses before any route
sees them (an over-long URL or header, a bad request line, too many headers, a broken
Content-Length), in the API's JSON form `{"detail": ...}` like every other 4xx of the
service, instead of aiohttp's plain text, and without the traceback aiohttp logs for each
(a client's garbage is one warning line, not an error). The detail never echoes the
request's bytes: an over-long URL may carry a token.

aiohttp builds these replies in its connection handler, outside the app and its
middlewares; `JsonErrorsRunner` serves the app with a handler that builds them here.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = structlog.get_logger(__name__)
# set on every reply of the service (`middlewares.common_headers`), these included
HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def refusal(exc: BaseException | None, message: str | None) -> str:
    """What is wrong with a request the parser refused, in words that quote none of it."""
    if isinstance(exc, LineTooLong):
        return f"Bad request: the request line or a header is longer than {exc.args[1]} bytes"
    # aiohttp's message, up to where it starts quoting the request ("…:\n\n  b'…'")
    text = (message or "").split(":\n", 1)[0].split("\n", 1)[0].strip().rstrip(":")
    if isinstance(exc, BadStatusLine) and "HTTPS" not in text:
        text = "malformed request line"
    if not text:
        text = "the request could not be parsed"
    return f"Bad request: {text[:1].lower()}{text[1:120]}"


class JsonErrorsHandler(RequestHandler):
    """aiohttp's connection handler, answering the requests it cannot parse in JSON."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not 400 <= status < 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            # as aiohttp's own: a reply begun cannot become another
            raise ConnectionError("a reply was begun; the connection is broken")
        detail = refusal(exc, message)
        log.warning("request refused by the HTTP parser", status=status, detail=detail)
        response = web.json_response({"detail": detail}, status=status, headers=HEADERS)
        response.force_close()
        return response


class JsonErrorsServer(web.Server):
    """aiohttp's server, whose connections are `JsonErrorsHandler`s."""

    def __call__(self) -> RequestHandler:
        return JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorsRunner(web.AppRunner):
    """`web.AppRunner` serving through a `JsonErrorsServer`: the app's server as aiohttp
    makes it (its handler, request factory and settings), with the connection handler
    above."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        kwargs: dict[str, Any] = dict(made._kwargs)
        return JsonErrorsServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **kwargs,
        )
