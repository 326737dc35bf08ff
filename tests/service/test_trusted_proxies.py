"""Behind a proxy that ends TLS: with the proxy listed in DEEPMEMORY_HTTP_TRUSTED_PROXIES,
its Forwarded or X-Forwarded-Proto / X-Forwarded-Host headers make the session cookie
Secure and the page's own https origin allowed; from anyone else those headers change
nothing, and a malformed one is ignored, never an error."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest

from deepmemory_service.gateway.auth import COOKIE, mint_token
from deepmemory_service.platform.config import Settings
from tests.conftest import Api

PUBLIC = "https://dm.example.org"
VIA_X_FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "dm.example.org"}
VIA_FORWARDED = {"Forwarded": 'for=203.0.113.7;proto=https;host="dm.example.org"'}


async def behind(api_factory: Any, settings: Settings, *proxies: str) -> Api:
    http = attrs.evolve(settings.http, trusted_proxies=proxies)
    api: Api = await api_factory(attrs.evolve(settings, http=http))
    return api


async def log_in(api: Api, headers: dict[str, str]) -> tuple[int, str]:
    token = mint_token(api.services.settings, uuid.uuid4(), 600)
    async with api.client.post(
        "/login",
        data={"token": token},
        headers={"Origin": PUBLIC, **headers},
        allow_redirects=False,
    ) as resp:
        return resp.status, resp.headers.get("Set-Cookie", "")


@pytest.mark.parametrize(
    "headers", [VIA_X_FORWARDED, VIA_FORWARDED], ids=["x-forwarded", "rfc7239"]
)
async def test_a_trusted_proxy_makes_the_cookie_secure_and_its_origin_the_pages(
    api_factory: Any, settings: Settings, headers: dict[str, str]
) -> None:
    # the test client comes from 127.0.0.1, listed here as part of a network
    api = await behind(api_factory, settings, "10.0.0.0/8", "127.0.0.0/8")
    status, cookie = await log_in(api, headers)
    assert status == 303
    assert f"{COOKIE}=" in cookie
    assert "Secure" in cookie
    # a cookie-authenticated change from the page's public origin passes the origin check
    # (sent by hand: a client's jar keeps a Secure cookie for https)
    session = cookie.split(";", 1)[0]
    async with api.client.put(
        "/api/deep-memory/settings",
        json={"enabled": False},
        headers={"Origin": PUBLIC, "Cookie": session, **headers},
    ) as resp:
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(
    ("proxies", "headers"),
    [
        ((), VIA_X_FORWARDED),  # none trusted: the default
        (("10.0.0.0/8",), VIA_X_FORWARDED),  # a proxy elsewhere: the client is not it
        (("127.0.0.1",), {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil host/x"}),
        (("127.0.0.1",), {"Forwarded": "proto=gopher;host=dm.example.org:99999999"}),
    ],
    ids=["default", "untrusted", "bad-host", "bad-forwarded"],
)
async def test_forwarded_headers_from_anyone_else_or_malformed_change_nothing(
    api_factory: Any, settings: Settings, proxies: tuple[str, ...], headers: dict[str, str]
) -> None:
    api = await behind(api_factory, settings, *proxies)
    status, cookie = await log_in(api, headers)
    assert status == 403
    assert cookie == ""
