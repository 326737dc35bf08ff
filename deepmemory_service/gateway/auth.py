"""User identity for the gateway: signed, expiring JWTs (HS256 with the secret key), sent
as `Authorization: Bearer` or in an HttpOnly, SameSite=Strict session cookie."""

from __future__ import annotations

import time
import uuid

import jwt
from aiohttp import web
from attrs import frozen
from yarl import URL

from deepmemory_service.errors import Forbidden, Unauthorized
from deepmemory_service.platform.config import Settings

AUDIENCE = "deepmemory-service"
COOKIE = "dm_session"
ALGORITHM = "HS256"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@frozen
class Identity:
    user_id: uuid.UUID
    # a cookie is sent by the browser on its own, so state changes need an origin check
    via_cookie: bool


def mint_token(settings: Settings, user_id: uuid.UUID, ttl_s: int) -> str:
    now = int(time.time())
    claims = {"sub": str(user_id), "aud": AUDIENCE, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM)


@frozen
class Verified:
    user_id: uuid.UUID
    expires_at: int


def verify(settings: Settings, token: str) -> Verified:
    """The token's user and expiry; `Unauthorized` with a detail a user can act on."""
    try:
        claims = jwt.decode(
            token,
            settings.secret_key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["exp", "sub", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("Token expired: log in again") from None
    except jwt.ImmatureSignatureError:
        # nbf (or iat) in the future: minted for later, or this server's clock is behind
        raise Unauthorized("Token is not valid yet (its nbf or iat is in the future)") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("Token is not meant for this service (wrong audience)") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized("Token signature is invalid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"Token lacks the {exc.claim} claim") from None
    except jwt.exceptions.InvalidSubjectError:
        raise Unauthorized("Token subject is not a user id") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("Token is malformed") from None
    try:
        return Verified(uuid.UUID(str(claims["sub"])), int(claims["exp"]))
    except ValueError:
        raise Unauthorized("Token subject is not a user id") from None


def verify_token(settings: Settings, token: str) -> uuid.UUID:
    return verify(settings, token).user_id


def identify(request: web.Request, settings: Settings) -> Identity:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization header must be: Bearer <token>")
        return Identity(verify_token(settings, token.strip()), via_cookie=False)
    cookie = request.cookies.get(COOKIE)
    if cookie:
        identity = Identity(verify_token(settings, cookie), via_cookie=True)
        if request.method in UNSAFE_METHODS:
            check_origin(request, settings)
        return identity
    raise Unauthorized("Authentication required: a Bearer token or a session cookie")


def check_origin(request: web.Request, settings: Settings) -> None:
    """A cookie-authenticated state change must come from this page's origin (CSRF)."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        raise Forbidden("Cross-site request refused: an Origin header is required")
    try:
        origin = str(URL(source).origin())
    except ValueError:
        # `Origin: null` (sandboxed frames, privacy redirects) and garbage: no origin to trust
        raise Forbidden(
            f"Cross-site request refused: origin {source[:64]!r} is not allowed"
        ) from None
    allowed = {str(request.url.origin()), *(o.rstrip("/") for o in settings.http.allowed_origins)}
    if origin not in allowed:
        raise Forbidden(f"Cross-site request refused: origin {origin} is not allowed")


def set_session(
    response: web.StreamResponse, request: web.Request, token: str, max_age: int
) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=max_age,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )
