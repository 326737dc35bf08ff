"""Login links and sessions (login CSRF): a link only shows which account it opens; only a
person's click on that page, a same-origin POST, sets the session; every page says who is
logged in."""

from __future__ import annotations

import re
import uuid

from deepmemory_service.gateway.auth import COOKIE, mint_token
from tests.conftest import Api


def origin_of(api: Api) -> str:
    return str(api.client.make_url("/").origin())


async def log_in(api: Api, user: uuid.UUID) -> None:
    token = mint_token(api.services.settings, user, 600)
    async with api.client.post(
        "/login", data={"token": token}, headers={"Origin": origin_of(api)}, allow_redirects=False
    ) as resp:
        assert resp.status == 303


async def test_a_login_link_never_logs_anyone_in_by_itself(api: Api) -> None:
    victim, attacker = uuid.uuid4(), uuid.uuid4()
    await log_in(api, victim)
    link = mint_token(api.services.settings, attacker, 600)
    # what a foreign page can make a browser do: follow the link (a top-level GET)
    async with api.client.get(
        f"/login?token={link}",
        headers={"Referer": "https://evil.example/"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 200
        assert "Set-Cookie" not in resp.headers
        page = await resp.text()
    assert f"You are logged in as user <code>{victim}</code>." in page
    assert f"This link logs you in as user\n<code>{attacker}</code>" in page
    assert (
        api.client.session.cookie_jar.filter_cookies(api.client.make_url("/"))[COOKIE].value != link
    ), "the link replaced the session"

    # the page's button posts the token back from the page's own origin: that logs in
    (token,) = re.findall(r'name="token" value="([^"]+)"', page)
    async with api.client.post(
        "/login", data={"token": token}, headers={"Origin": origin_of(api)}, allow_redirects=False
    ) as resp:
        assert (resp.status, resp.headers["Location"]) == (303, "/deep-memory")
    async with api.client.get("/login") as resp:
        assert f"You are logged in as user <code>{attacker}</code>." in await resp.text()


async def test_a_stranger_is_told_nobody_is_logged_in(api: Api) -> None:
    async with api.client.get("/login") as resp:
        assert "You are not logged in." in await resp.text()


async def test_the_page_names_the_account_it_works_in(api: Api) -> None:
    user = uuid.uuid4()
    await log_in(api, user)
    async with api.client.get("/deep-memory") as resp:
        assert resp.status == 200
        assert f"Logged in as user <code>{user}</code>" in await resp.text()


async def test_logout_from_another_site_is_refused(api: Api) -> None:
    user = uuid.uuid4()
    await log_in(api, user)
    for headers in ({"Origin": "https://evil.example"}, {}):
        async with api.client.post("/logout", headers=headers, allow_redirects=False) as resp:
            assert resp.status == 403
            assert (await resp.json())["detail"].startswith("Cross-site request refused")
            assert "Set-Cookie" not in resp.headers
    async with api.client.get("/deep-memory", allow_redirects=False) as resp:
        assert resp.status == 200, "a foreign page logged the visitor out"
    async with api.client.post(
        "/logout", headers={"Origin": origin_of(api)}, allow_redirects=False
    ) as resp:
        assert (resp.status, resp.headers["Location"]) == (303, "/login")
    async with api.client.get("/deep-memory", allow_redirects=False) as resp:
        assert resp.status == 303


async def test_any_login_form_is_answered_on_the_form_never_a_500(api: Api) -> None:
    """Extra fields, thousands of them, a token twice, bytes that are not UTF-8 or not a
    form at all: the form's own page says what is wrong (or the login works)."""
    user = uuid.uuid4()
    token = mint_token(api.services.settings, user, 600)
    fields = "&".join(f"field{i}=value{i}" for i in range(5000))
    cases: list[tuple[bytes, int, str]] = [
        (f"a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&token={token}".encode(), 303, ""),
        (f"token={token}&token=second".encode(), 303, ""),
        (fields.encode(), 400, "Paste a token to log in."),
        (b"token=%ff%fe%00", 401, "Token is malformed"),
        (b"\xff\xfe\x00garbage;;&&==%%", 400, "Paste a token to log in."),
        (b"", 400, "Paste a token to log in."),
    ]
    for body, status, says in cases:
        async with api.client.post(
            "/login",
            data=body,
            headers={
                "Origin": origin_of(api),
                "Content-Type": "application/x-www-form-urlencoded",
            },
            allow_redirects=False,
        ) as resp:
            assert resp.status == status, body[:40]
            if status == 303:
                assert resp.headers["Location"] == "/deep-memory"
                continue
            assert resp.content_type == "text/html"
            assert says in await resp.text()
