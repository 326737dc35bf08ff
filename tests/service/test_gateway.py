"""The gateway: identity from signed tokens only, exact spec proxies, and isolation of users."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import attrs
import jwt
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from deepmemory_service.gateway.auth import AUDIENCE, COOKIE, mint_token
from deepmemory_service.testing.fakes import ControlledGenerator
from tests.conftest import SECRET_KEY, SERVICE_TOKEN, Api, read_stream


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def gw(
    api: Api, method: str, path: str, token: str | None = None, **kwargs: Any
) -> tuple[int, Any]:
    headers = dict(kwargs.pop("headers", {}))
    if token:
        headers.update(bearer(token))
    async with api.client.request(method, path, headers=headers, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


@pytest.fixture
async def two_users(api_factory: Any) -> tuple[Api, ControlledGenerator, dict[str, Any]]:
    gen = ControlledGenerator(fail_after=2)
    api: Api = await api_factory(generator=gen)
    settings = api.services.settings
    a, b = uuid.uuid4(), uuid.uuid4()
    await api.ingest(a, 6)
    await api.ingest(b, 6)
    ta, tb = mint_token(settings, a, 600), mint_token(settings, b, 600)
    code, body = await gw(api, "POST", "/api/deep-memory/generate", ta, json={})
    assert code == 202, body
    await api.wait_status(a, body["training_run_id"], "generating_failed")
    await api.idle(a)
    return (
        api,
        gen,
        {"a": a, "b": b, "ta": ta, "tb": tb, "run": body["training_run_id"], "job": body["job_id"]},
    )


async def test_spec_proxies_for_proceed_and_delete(two_users: Any) -> None:
    api, _, u = two_users
    code, body = await gw(
        api, "POST", "/api/deep-memory/proceed", u["ta"], json={"training_run_id": u["run"]}
    )
    assert code == 202
    done = (await api.run(u["a"], u["run"]))["generated_chunks"]
    assert body["message"] == f"Resuming generation from chunk {done}/6"
    assert set(body) == {"job_id", "training_run_id", "message"}
    await api.wait_status(u["a"], u["run"], "generating_failed")
    await api.idle(u["a"])
    pairs = (await api.run(u["a"], u["run"]))["pair_count"]

    code, body = await gw(api, "DELETE", f"/api/deep-memory/runs/{u['run']}", u["ta"])
    assert (code, body) == (200, {"message": f"Training run and {pairs} associated pairs deleted"})


async def test_one_user_can_never_touch_anothers_run(two_users: Any) -> None:
    api, _, u = two_users
    missing = {"detail": "Training run not found"}
    tb = u["tb"]
    assert await gw(api, "GET", f"/api/deep-memory/runs/{u['run']}", tb) == (404, missing)
    assert await gw(
        api, "POST", "/api/deep-memory/proceed", tb, json={"training_run_id": u["run"]}
    ) == (404, missing)
    assert await gw(api, "DELETE", f"/api/deep-memory/runs/{u['run']}", tb) == (404, missing)
    code, body = await gw(api, "GET", f"/api/events/stream/{u['job']}", tb)
    assert (code, body) == (404, {"detail": "Job not found"})
    code, listing = await gw(api, "GET", "/api/deep-memory/runs", tb)
    assert listing == {"runs": []}
    # A's run is untouched
    assert (await api.run(u["a"], u["run"]))["status"] == "generating_failed"


async def test_a_token_cannot_become_another_user(two_users: Any) -> None:
    api, _, u = two_users
    a = str(u["a"])
    tb = u["tb"]
    # user_id in the body, the query, or a header is ignored: the token decides
    code, _ = await gw(
        api,
        "POST",
        "/api/deep-memory/proceed",
        tb,
        json={"training_run_id": u["run"], "user_id": a},
    )
    assert code == 404
    code, _ = await gw(api, "DELETE", f"/api/deep-memory/runs/{u['run']}?user_id={a}", tb)
    assert code == 404
    code, body = await gw(
        api, "GET", f"/api/deep-memory/settings?user_id={a}", tb, headers={"X-User-Id": a}
    )
    assert code == 200
    assert body["has_blocking_run"] is False  # B's settings, not A's
    code, listing = await gw(api, "GET", f"/api/deep-memory/runs?user_id={a}", tb)
    assert listing == {"runs": []}


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda: None, "Authentication required: a Bearer token or a session cookie"),
        (
            lambda: jwt.encode(
                {"sub": str(uuid.uuid4()), "aud": AUDIENCE, "exp": int(time.time()) - 5},
                SECRET_KEY,
                algorithm="HS256",
            ),
            "Token expired: log in again",
        ),
        (
            lambda: jwt.encode(
                {"sub": str(uuid.uuid4()), "aud": AUDIENCE, "exp": int(time.time()) + 60},
                "another-key-also-long-enough-to-sign",
                algorithm="HS256",
            ),
            "Token signature is invalid",
        ),
        (
            lambda: jwt.encode(
                {"sub": str(uuid.uuid4()), "aud": "someone-else", "exp": int(time.time()) + 60},
                SECRET_KEY,
                algorithm="HS256",
            ),
            "Token is not meant for this service (wrong audience)",
        ),
        (
            lambda: jwt.encode(
                {"sub": "admin", "aud": AUDIENCE, "exp": int(time.time()) + 60},
                SECRET_KEY,
                algorithm="HS256",
            ),
            "Token subject is not a user id",
        ),
        (
            lambda: jwt.encode(
                {
                    "sub": str(uuid.uuid4()),
                    "aud": AUDIENCE,
                    "nbf": int(time.time()) + 3600,
                    "exp": int(time.time()) + 7200,
                },
                SECRET_KEY,
                algorithm="HS256",
            ),
            "Token is not valid yet (its nbf or iat is in the future)",
        ),
        (lambda: "not.a.jwt", "Token is malformed"),
    ],
)
async def test_bad_tokens_are_401_with_a_clear_detail(api: Api, make: Any, detail: str) -> None:
    code, body = await gw(api, "GET", "/api/deep-memory/settings", make())
    assert (code, body) == (401, {"detail": detail})


async def test_tampered_token_is_refused(api: Api) -> None:
    token = mint_token(api.services.settings, uuid.uuid4(), 600)
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload[:-2]}AA.{sig}"
    code, _ = await gw(api, "GET", "/api/deep-memory/settings", forged)
    assert code == 401


async def test_backend_refuses_calls_without_the_service_token(api: Api) -> None:
    user = str(uuid.uuid4())
    token = mint_token(api.services.settings, uuid.UUID(user), 600)
    # a user token is not the service token
    code, _ = await gw(api, "GET", f"/v1/api/deep-memory/settings?user_id={user}", token)
    assert code == 401
    code, _ = await gw(api, "GET", f"/v1/api/deep-memory/settings?user_id={user}", SERVICE_TOKEN)
    assert code == 200


async def test_login_sets_an_httponly_samesite_cookie_and_csrf_is_blocked(api: Api) -> None:
    user = uuid.uuid4()
    await api.ingest(user, 2)
    token = mint_token(api.services.settings, user, 600)
    origin = str(api.client.make_url("/").origin())
    async with api.client.post(
        "/login", data={"token": token}, headers={"Origin": origin}, allow_redirects=False
    ) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/deep-memory"
        cookie = resp.headers["Set-Cookie"]
    assert f"{COOKIE}=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    # plain http here; the same code marks it Secure behind https
    assert "Secure" not in cookie
    # the cookie lives no longer than the token in it
    max_age = int(cookie.split("Max-Age=")[1].split(";")[0])
    assert 590 <= max_age <= 600

    # the cookie works for reads
    code, body = await gw(api, "GET", "/api/deep-memory/settings")
    assert code == 200
    assert body["total_chunks"] == 2
    # a state change from another site is refused; from the page's own origin it passes
    code, body = await gw(
        api,
        "POST",
        "/api/deep-memory/generate",
        json={},
        headers={"Origin": "https://evil.example"},
    )
    assert (code, body) == (
        403,
        {"detail": "Cross-site request refused: origin https://evil.example is not allowed"},
    )
    code, body = await gw(api, "POST", "/api/deep-memory/generate", json={})
    assert code == 403
    code, body = await gw(
        api, "POST", "/api/deep-memory/generate", json={}, headers={"Origin": origin}
    )
    assert code == 202, body

    async with api.client.get("/login?token=garbage", allow_redirects=False) as resp:
        assert resp.status == 401
        assert "Token is malformed" in await resp.text()


async def test_gateway_streams_events_and_keeps_last_event_id(api_factory: Any) -> None:
    api: Api = await api_factory(generator=ControlledGenerator())
    user = uuid.uuid4()
    await api.ingest(user, 8)
    token = mint_token(api.services.settings, user, 600)
    code, body = await gw(api, "POST", "/api/deep-memory/generate", token, json={})
    assert code == 202
    path = f"/api/events/stream/{body['job_id']}"
    events = await read_stream(api, user, body["job_id"], path=path, headers=bearer(token))
    assert events[-1].event == "done"
    direct = await read_stream(api, user, body["job_id"])
    assert events == direct
    later = await read_stream(
        api, user, body["job_id"], path=path, headers=bearer(token), last_event_id=events[0].id
    )
    assert later == events[1:]


async def test_bad_gateway_input_is_4xx(api: Api) -> None:
    token = mint_token(api.services.settings, uuid.uuid4(), 600)
    assert await gw(api, "DELETE", "/api/deep-memory/runs/nope", token) == (
        422,
        {"detail": "runId: not a valid UUID: 'nope'"},
    )
    assert await gw(api, "POST", "/api/deep-memory/proceed", token, data=b"{") == (
        400,
        {"detail": "body: not valid JSON"},
    )
    assert await gw(api, "POST", "/api/deep-memory/proceed", token, json=[1]) == (
        422,
        {"detail": "body: must be a JSON object"},
    )
    assert await gw(api, "POST", "/api/deep-memory/proceed", token, json={}) == (
        422,
        {"detail": "training_run_id: field required"},
    )


async def test_a_backend_that_is_down_is_a_502(api_factory: Any, settings: Any) -> None:

    down = attrs.evolve(
        settings, http=attrs.evolve(settings.http, role="gateway", backend_url="http://127.0.0.1:9")
    )
    api: Api = await api_factory(down)
    token = mint_token(down, uuid.uuid4(), 600)
    assert await gw(api, "GET", "/api/deep-memory/settings", token) == (
        502,
        {"detail": "Backend unavailable: cannot connect"},
    )
    assert await gw(api, "GET", f"/api/events/stream/{uuid.uuid4()}", token) == (
        502,
        {"detail": "Backend unavailable: cannot connect"},
    )


async def test_no_token_or_secret_reaches_the_logs(two_users: Any) -> None:
    api, _, u = two_users
    expired = jwt.encode(
        {"sub": str(u["a"]), "aud": AUDIENCE, "exp": int(time.time()) - 5},
        SECRET_KEY,
        algorithm="HS256",
    )
    origin = str(api.client.make_url("/").origin())
    with capture_logs() as logs:
        await gw(
            api, "POST", "/api/deep-memory/proceed", u["ta"], json={"training_run_id": u["run"]}
        )
        await gw(api, "GET", "/api/deep-memory/settings", "bogus.token.value")
        await gw(api, "GET", "/api/deep-memory/settings", expired)
        async with api.client.get(f"/login?token={u['tb']}", allow_redirects=False) as resp:
            assert resp.status == 200
        async with api.client.post(
            "/login", data={"token": u["tb"]}, headers={"Origin": origin}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
        async with api.client.post(
            "/login", data={"token": expired}, headers={"Origin": origin}
        ) as resp:
            assert resp.status == 401
        await gw(api, "GET", f"/api/deep-memory/runs/{u['run']}")  # by cookie (user B): 404
        await api.wait_status(u["a"], u["run"], "generating_failed")
    assert logs, "nothing was captured: the check would prove nothing"
    text = repr(logs)
    for secret in (u["ta"], u["tb"], expired, SERVICE_TOKEN, SECRET_KEY, "bogus.token.value"):
        assert secret not in text
    # no fragment either: a JWT's signature alone is enough to notice a leak
    for token in (u["ta"], u["tb"], expired):
        assert token.rsplit(".", 1)[1] not in text


async def test_the_backend_refuses_a_missing_or_wrong_service_token(api: Api) -> None:
    path = f"/v1/api/deep-memory/settings?user_id={uuid.uuid4()}"
    detail = {"detail": "Missing or invalid service token (Authorization: Bearer <token>)"}
    assert await gw(api, "GET", path) == (401, detail)
    assert await gw(api, "GET", path, "not-the-service-token") == (401, detail)
    assert await gw(api, "GET", path, headers={"Authorization": SERVICE_TOKEN}) == (401, detail)


async def _log_in(api: Api, user: uuid.UUID) -> None:
    """As a person does: the login page's form, posted from the page's own origin."""
    token = mint_token(api.services.settings, user, 600)
    origin = str(api.client.make_url("/").origin())
    async with api.client.post(
        "/login", data={"token": token}, headers={"Origin": origin}, allow_redirects=False
    ) as resp:
        assert resp.status == 303


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "null"},  # sandboxed frames send this; it is no origin to trust
        {"Origin": "http://[::1"},
        {"Referer": "not a url"},
        {"Referer": "https://evil.example/page"},
        {"Origin": "https://evil.example", "Referer": "http://127.0.0.1/"},
    ],
)
async def test_odd_origins_on_a_cookie_state_change_are_403_never_500(
    api: Api, headers: dict[str, str]
) -> None:
    user = uuid.uuid4()
    await _log_in(api, user)
    for method, path in [
        ("POST", "/api/deep-memory/generate"),
        ("PUT", "/api/deep-memory/settings"),
        ("DELETE", f"/api/deep-memory/runs/{uuid.uuid4()}"),
        ("POST", "/api/deep-memory/proceed"),
    ]:
        code, body = await gw(api, method, path, json={}, headers=headers)
        assert code == 403, (method, path, body)
        assert body["detail"].startswith("Cross-site request refused")


async def test_a_bearer_call_needs_no_origin_and_a_cookie_read_is_not_checked(api: Api) -> None:
    user = uuid.uuid4()
    await api.ingest(user, 2)
    token = mint_token(api.services.settings, user, 600)
    # CSRF needs a credential the browser sends by itself; a Bearer header is never one
    code, body = await gw(
        api,
        "POST",
        "/api/deep-memory/generate",
        token,
        json={},
        headers={"Origin": "https://elsewhere.example"},
    )
    assert code == 202, body
    await _log_in(api, user)
    code, body = await gw(
        api, "GET", "/api/deep-memory/settings", headers={"Origin": "https://elsewhere.example"}
    )
    assert code == 200
    assert body["has_blocking_run"] is True


async def test_configured_allowed_origins_pass(api_factory: Any, settings: Any) -> None:

    proxied = attrs.evolve(
        settings,
        http=attrs.evolve(settings.http, allowed_origins=("https://dm.example.org/",)),
    )
    api: Api = await api_factory(proxied)
    user = uuid.uuid4()
    await api.ingest(user, 2)
    await _log_in(api, user)
    code, body = await gw(
        api,
        "POST",
        "/api/deep-memory/generate",
        json={},
        headers={"Origin": "https://dm.example.org"},
    )
    assert code == 202, body


async def test_login_form_from_another_site_is_refused(api: Api) -> None:
    token = mint_token(api.services.settings, uuid.uuid4(), 600)
    async with api.client.post(
        "/login",
        data={"token": token},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 403
        assert "Set-Cookie" not in resp.headers
    origin = str(api.client.make_url("/").origin())
    async with api.client.post(
        "/login", data={"token": token}, headers={"Origin": origin}, allow_redirects=False
    ) as resp:
        assert resp.status == 303
        assert f"{COOKIE}=" in resp.headers["Set-Cookie"]


async def test_logout_clears_the_cookie(api: Api) -> None:
    user = uuid.uuid4()
    await _log_in(api, user)
    assert (await gw(api, "GET", "/api/deep-memory/settings"))[0] == 200
    origin = str(api.client.make_url("/").origin())
    async with api.client.post(
        "/logout", headers={"Origin": origin}, allow_redirects=False
    ) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/login"
    code, body = await gw(api, "GET", "/api/deep-memory/settings")
    assert (code, body) == (
        401,
        {"detail": "Authentication required: a Bearer token or a session cookie"},
    )


async def test_the_page_and_login_cannot_be_framed_or_leak_the_token(api: Api) -> None:
    user = uuid.uuid4()
    token = mint_token(api.services.settings, user, 600)
    async with api.client.get(f"/login?token={token}", allow_redirects=False) as resp:
        assert resp.headers["Referrer-Policy"] == "same-origin"
        assert resp.headers["Cache-Control"] == "no-store"
    await _log_in(api, user)
    async with api.client.get("/deep-memory") as resp:
        assert resp.status == 200
        assert "Generate Training Data" in await resp.text()
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY"
    async with api.client.get("/static/deep-memory.js") as resp:
        assert resp.status == 200
        assert "EventSource" in await resp.text()


async def test_the_page_sends_a_stranger_to_the_login_form(api: Api) -> None:
    async with api.client.get("/deep-memory", allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"]) == (303, "/login")
    async with api.client.get("/login") as resp:
        page = await resp.text()
        assert '<form method="post" action="/login">' in page
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_a_spoofed_host_header_does_not_move_the_backend(api: Api) -> None:
    # in one process the backend is this server's own socket; were it taken from Host,
    # this call would carry the service token to evil.invalid and fail with a 502
    token = mint_token(api.services.settings, uuid.uuid4(), 600)
    code, body = await gw(
        api, "GET", "/api/deep-memory/settings", token, headers={"Host": "evil.invalid:1"}
    )
    assert code == 200, body


async def test_backend_conflicts_pass_through_unchanged(api: Api) -> None:
    user = uuid.uuid4()
    await api.ingest(user, 3)
    token = mint_token(api.services.settings, user, 600)
    code, first = await gw(api, "POST", "/api/deep-memory/generate", token, json={})
    assert code == 202
    code, body = await gw(api, "POST", "/api/deep-memory/generate", token, json={})
    assert code == 409
    assert body == {
        "detail": "Cannot start new generation: an unfinished training run exists",
        "blocking_run_id": first["training_run_id"],
        "blocking_run_status": body["blocking_run_status"],
    }
    assert body["blocking_run_status"] in {"generating", "generated"}
    # the backend names the field it refuses; the gateway adds and hides nothing
    code, body = await gw(
        api, "POST", "/api/deep-memory/generate", token, json={"questions_per_chunk": "many"}
    )
    assert code == 422
    assert "questions_per_chunk" in body["detail"]


@attrs.define
class FakeBackend:
    """A stand-in backend that records what the gateway sent and when its stream was left."""

    seen: list[tuple[str, str, dict[str, str]]] = attrs.field(factory=list)
    left: asyncio.Event = attrs.field(factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/api/events/stream/{job_id}", self.stream)
        app.router.add_post("/v1/api/deep-memory/proceed", self.proceed)
        app.router.add_post("/v1/api/deep-memory/train", self.busy)
        return app

    async def busy(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response(
            {"detail": "Too many pending commands for this user; retry shortly"},
            status=503,
            headers={"Retry-After": "2", "X-Internal": "not for clients"},
        )

    def _record(self, request: web.Request) -> None:
        self.seen.append(
            (
                request.path_qs,
                request.headers.get("Authorization", ""),
                {
                    k: v
                    for k, v in request.headers.items()
                    if k in ("Last-Event-ID", "X-Request-ID")
                },
            )
        )

    async def proceed(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response({"echo": await request.json()}, status=202)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'id: 7\nevent: progress\ndata: {"fraction": 0.5}\n\n')
        # then silence, as a job between two events: only the client leaving ends this (a
        # test server cancels a handler whose connection closed)
        try:
            await asyncio.Event().wait()
        finally:
            self.left.set()
        return resp


@pytest.fixture
async def fake_backend(
    aiohttp_server: Any, api_factory: Any, settings: Any
) -> tuple[Api, FakeBackend, Any]:
    fake = FakeBackend()
    server = await aiohttp_server(fake.app())
    split = attrs.evolve(
        settings,
        http=attrs.evolve(settings.http, role="gateway", backend_url=str(server.make_url(""))),
    )
    return await api_factory(split), fake, split


async def test_a_separate_gateway_sends_the_identity_and_the_service_token(
    fake_backend: Any,
) -> None:
    api, fake, split = fake_backend
    user, other = uuid.uuid4(), uuid.uuid4()
    run = str(uuid.uuid4())
    token = mint_token(split, user, 600)
    code, body = await gw(
        api,
        "POST",
        f"/api/deep-memory/proceed?user_id={other}",
        token,
        json={"training_run_id": run, "user_id": str(other), "extra": 1},
        headers={"X-User-Id": str(other), "X-Request-ID": "req-1"},
    )
    assert code == 202
    assert body == {"echo": {"training_run_id": run, "user_id": str(user)}}
    path, authorization, headers = fake.seen[-1]
    assert path == "/v1/api/deep-memory/proceed"
    assert authorization == f"Bearer {SERVICE_TOKEN}"
    assert headers == {"X-Request-ID": "req-1"}


async def test_a_busy_backend_passes_through_with_its_retry_after(fake_backend: Any) -> None:
    api, _, split = fake_backend
    token = mint_token(split, uuid.uuid4(), 600)
    async with api.client.post(
        "/api/deep-memory/train", json={"training_run_id": str(uuid.uuid4())}, headers=bearer(token)
    ) as resp:
        assert resp.status == 503
        assert await resp.json() == {
            "detail": "Too many pending commands for this user; retry shortly"
        }
        assert resp.headers["Retry-After"] == "2"
        assert "X-Internal" not in resp.headers


async def test_the_stream_is_passed_through_live_and_closed_when_the_client_leaves(
    fake_backend: Any, make_app: Any
) -> None:
    _, fake, split = fake_backend
    # served as `serve` does: aiohttp's test server would cancel the handler of a departed
    # client by itself, production does not, so the gateway must notice on its own
    runner = web.AppRunner(make_app(split), handler_cancellation=False, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    user, job = uuid.uuid4(), uuid.uuid4()
    token = mint_token(split, user, 600)
    headers = {**bearer(token), "Last-Event-ID": "6"}
    url = f"http://127.0.0.1:{port}/api/events/stream/{job}?user_id={uuid.uuid4()}"
    try:
        async with asyncio.timeout(10), aiohttp.ClientSession() as session:
            resp = await session.get(url, headers=headers)
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            # the first event arrives while the upstream is still open: nothing is buffered
            first = await resp.content.readuntil(b"\n\n")
            assert first == b'id: 7\nevent: progress\ndata: {"fraction": 0.5}\n\n'
            assert not fake.left.is_set()
            resp.close()
            await fake.left.wait()
    finally:
        await runner.cleanup()
    path, authorization, sent = fake.seen[-1]
    assert path == f"/v1/api/events/stream/{job}?user_id={user}"
    assert authorization == f"Bearer {SERVICE_TOKEN}"
    assert sent == {"Last-Event-ID": "6"}
