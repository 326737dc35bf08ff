"""`serve --demo`: a demo user whose corpus (a bundled public-domain text) is ingested, and a
ready login link, so a newcomer sees the page working within a minute, offline."""

from __future__ import annotations

import sys
import uuid
from importlib import resources

import structlog
from aiohttp import web

from deepmemory_service.api.keys import BACKEND, SERVICES, SETTINGS
from deepmemory_service.storage import documents
from deepmemory_service.storage.documents import DocumentText

log = structlog.get_logger(__name__)

DEMO_USER = uuid.uuid5(uuid.NAMESPACE_URL, "deepmemory-service/demo-user")
CORPUS = "us-founding-documents.md"
TTL_S = 7 * 24 * 3600


async def ensure_corpus(app: web.Application) -> int:
    """Ingests the bundled corpus for the demo user once; returns the user's chunk count."""
    svc = app[BACKEND][SERVICES]
    async with svc.db.conn() as conn:
        total = await conn.total_chunks(DEMO_USER)
    if total:
        return total
    text = resources.files("deepmemory_service").joinpath(f"data/{CORPUS}").read_text()
    result = await documents.ingest(svc.corpora, DEMO_USER, [DocumentText(text, CORPUS)])
    return result.total_chunks


async def announce(app: web.Application) -> None:
    from deepmemory_service.gateway.auth import mint_token

    settings = app[SETTINGS]
    chunks = await ensure_corpus(app) if BACKEND in app else 0
    token = mint_token(settings, DEMO_USER, TTL_S)
    # a wildcard listen address is no place to point a browser at
    wildcard = settings.http.host in ("0.0.0.0", "::")  # noqa: S104  # compared, not bound
    host = "127.0.0.1" if wildcard else settings.http.host
    link = f"http://{host}:{settings.http.port}/login?token={token}"
    # the link is for the person at this terminal, so it goes to stdout, never to the logs
    print(
        f"\nDeep Memory demo: user {DEMO_USER} with {chunks} chunks of {CORPUS}.\n"
        f"Open this link to log in (valid 7 days):\n\n  {link}\n",
        file=sys.stdout,
        flush=True,
    )
