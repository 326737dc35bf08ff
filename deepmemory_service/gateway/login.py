"""The gateway's pages for people: log in, log out, and the Deep Memory page behind them.

A login link (`GET /login?token=…`) never logs anyone in by itself: another site could send
a visitor one of its own accounts' links (login CSRF), and the visitor would work inside the
attacker's account. The link shows which account it logs into, with a button; only that
page's own `POST /login` sets the session. Every page says which account is logged in.
"""

from __future__ import annotations

import html
import time
import uuid
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qsl

from aiohttp import web

from deepmemory_service.api.keys import SETTINGS
from deepmemory_service.api.payloads import read_body
from deepmemory_service.errors import Unauthorized
from deepmemory_service.gateway import auth

# the page's files, served under /static by the gateway
WEB = Path(str(resources.files("deepmemory_service.gateway").joinpath("web")))
SESSION_S = 7 * 24 * 3600
# the page and the login form load only their own files; nobody may frame them (clickjacking
# a Delete button), and a token in the login URL never leaves as a Referer to another site
# ("no-referrer" would be stricter, but then a browser sends `Origin: null` with the login
# form, which the origin check must refuse)
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · Deep Memory</title><link rel="icon" href="/favicon.ico" sizes="32x32">
<link rel="stylesheet" href="/static/deep-memory.css">
</head><body><main class="card narrow"><h1>Log in</h1>
<p class="hint" data-testid="session">{session}</p>{body}
</main></body></html>"""

PASTE_FORM = """{error}<form method="post" action="/login"><label for="token">Access token</label>
<textarea id="token" name="token" rows="4" required></textarea>
<button type="submit">Log in</button></form>
<p class="hint">Mint one in the service's checkout with
<code class="command">scripts/deepmemory-service token --user UUID</code>
or, where it is installed, <code class="command">deepmemory-service token --user UUID</code></p>"""

CONFIRM_FORM = """<p data-testid="link-account">This link logs you in as user
<code>{user}</code> until {until}.</p>
<form method="post" action="/login"><input type="hidden" name="token" value="{token}">
<button type="submit" data-testid="confirm-login">Log in as {short}</button></form>
<p class="hint">Continue only if this is your account: whatever you do next is done in it.</p>"""


def _account(user_id: uuid.UUID) -> str:
    return f"<code>{html.escape(str(user_id))}</code>"


def _session(request: web.Request) -> str:
    """Who is logged in here now, in words for the page."""
    cookie = request.cookies.get(auth.COOKIE)
    if cookie:
        try:
            user_id = auth.verify_token(request.app[SETTINGS], cookie)
        except Unauthorized:
            pass
        else:
            return f"You are logged in as user {_account(user_id)}."
    return "You are not logged in."


def _page(request: web.Request, body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=LOGIN_PAGE.format(session=_session(request), body=body),
        status=status,
        content_type="text/html",
        headers=PAGE_HEADERS,
    )


def _token_form(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    block = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return _page(request, PASTE_FORM.format(error=block), status)


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **PAGE_HEADERS})


@cache
def _page_template() -> str:
    return (WEB / "deep-memory.html").read_text(encoding="utf-8")


def form_token(body: bytes) -> str:
    """The `token` field of a URL-encoded form (the first, if it comes twice), or "". Any
    number of fields and any bytes parse (the body is within the size limit): what is not
    UTF-8 is replaced, and such a token is then refused as malformed, on the form's page."""
    text = body.decode("utf-8", "replace")
    for name, value in parse_qsl(text, keep_blank_values=True, errors="replace"):
        if name == "token":
            return value.strip()
    return ""


routes = web.RouteTableDef()


@routes.get("/login")
async def login_get(request: web.Request) -> web.StreamResponse:
    """A link's token is shown for a person to confirm, never used to log in on its own."""
    token = request.query.get("token", "").strip()
    if not token:
        return _token_form(request)
    try:
        verified = auth.verify(request.app[SETTINGS], token)
    except Unauthorized as exc:
        return _token_form(request, exc.detail, 401)
    until = datetime.fromtimestamp(verified.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    user = str(verified.user_id)
    body = CONFIRM_FORM.format(
        user=html.escape(user),
        short=html.escape(user[:8]),
        until=until,
        token=html.escape(token, quote=True),
    )
    return _page(request, body)


@routes.post("/login")
async def login_post(request: web.Request) -> web.StreamResponse:
    # another site must not log a visitor into its own account (login CSRF)
    settings = request.app[SETTINGS]
    auth.check_origin(request, settings)
    token = form_token(await read_body(request))
    if not token:
        return _token_form(request, "Paste a token to log in.", 400)
    try:
        verified = auth.verify(settings, token)
    except Unauthorized as exc:
        return _token_form(request, exc.detail, 401)
    response = _redirect("/deep-memory")
    # the cookie goes when the token does: the browser never sends one the gateway refuses
    max_age = min(SESSION_S, verified.expires_at - int(time.time()))
    auth.set_session(response, request, token, max(max_age, 1))
    return response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    # another site must not log a visitor out either (it could then log them in as itself)
    auth.check_origin(request, request.app[SETTINGS])
    response = _redirect("/login")
    response.del_cookie(auth.COOKIE, path="/")
    return response


@routes.get("/deep-memory")
async def page(request: web.Request) -> web.StreamResponse:
    try:
        identity = auth.identify(request, request.app[SETTINGS])
    except Unauthorized:
        return _redirect("/login")
    text = _page_template().replace("{{account}}", html.escape(str(identity.user_id)))
    return web.Response(text=text, content_type="text/html", headers=PAGE_HEADERS)


@routes.get("/")
async def home(_request: web.Request) -> web.StreamResponse:
    return _redirect("/deep-memory")


@cache
def _web_files() -> frozenset[str]:
    return frozenset(path.name for path in WEB.iterdir() if path.is_file())


@routes.get("/static/{name}")
async def static_file(request: web.Request) -> web.StreamResponse:
    """The page's own files, by name (aiohttp's static route answers a missing one with an
    empty body of no type instead of the API's JSON 404)."""
    name = request.match_info["name"]
    if name not in _web_files():
        raise web.HTTPNotFound()
    return web.FileResponse(WEB / name)


@routes.get("/favicon.ico")
async def favicon(_request: web.Request) -> web.StreamResponse:
    # browsers ask for it on every page, the JSON ones too
    return web.FileResponse(WEB / "favicon.ico", headers={"Cache-Control": "max-age=86400"})
