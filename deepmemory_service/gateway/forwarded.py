"""How a client reached the service when a proxy stands in front of it (one that ends TLS,
say): the scheme and host its `Forwarded` (RFC 7239) or `X-Forwarded-Proto` /
`X-Forwarded-Host` headers name, believed only from a proxy listed in
`DEEPMEMORY_HTTP_TRUSTED_PROXIES` (from anyone else they could claim anything). The request
is then seen as the client made it: behind TLS the session cookie is `Secure`, and the
page's own https origin passes the origin check. Of several values (a chain of proxies),
the last counts: the one the trusted proxy itself added; earlier ones a client can forge.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple[Network, ...])
# a host name or an IP literal, and a port
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}"
    r"[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
SCHEMES = frozenset({"http", "https"})


def networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """The proxies' addresses or networks; ValueError names an entry that is neither."""
    found = []
    for entry in entries:
        try:
            found.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(found)


def _from_trusted(remote: str | None, trusted: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    return any(address in network for network in trusted)


def _last(header: str | None) -> str | None:
    if not header:
        return None
    return header.rsplit(",", 1)[-1].strip() or None


def claimed(request: web.Request) -> tuple[str | None, str | None]:
    """The scheme and host the proxy's headers name (None where one is missing or is not a
    scheme or host: a malformed header is ignored, never an error)."""
    if "Forwarded" in request.headers:
        elements = request.forwarded
        last = elements[-1] if elements else {}
        scheme, host = last.get("proto"), last.get("host")
    else:
        scheme = _last(request.headers.get("X-Forwarded-Proto"))
        host = _last(request.headers.get("X-Forwarded-Host"))
    scheme = scheme.lower() if scheme and scheme.lower() in SCHEMES else None
    host = host if host and len(host) <= 255 and _HOST.fullmatch(host) else None
    return scheme, host


@web.middleware
async def forwarded(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The request as its client made it, when a trusted proxy says how."""
    trusted = request.config_dict[TRUSTED_PROXIES]
    if not trusted or not _from_trusted(request.remote, trusted):
        return await handler(request)
    scheme, host = claimed(request)
    if scheme is None and host is None:
        return await handler(request)
    return await handler(request.clone(scheme=scheme or request.scheme, host=host or request.host))
