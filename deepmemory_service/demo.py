"""`serve --demo`: a demo user whose corpus (a bundled public-domain text) is ingested, and a
ready login link, so a newcomer sees the page working within a minute, offline."""

from __future__ import annotations

import sys
import uuid
from importlib import resources

import structlog
from aiohttp import web
from attrs import frozen

from deepmemory_service.api.keys import BACKEND, SERVICES, SETTINGS
from deepmemory_service.storage import documents
from deepmemory_service.storage.documents import DocumentText

log = structlog.get_logger(__name__)

DEMO_USER = uuid.uuid5(uuid.NAMESPACE_URL, "deepmemory-service/demo-user")
CORPUS = "us-founding-documents.md"
TTL_S = 7 * 24 * 3600


@frozen
class DemoCorpus:
    """What the demo user has: the bundled corpus's chunks, and all of theirs (documents
    added on the page or with `ingest` too)."""

    corpus_chunks: int
    total_chunks: int
    documents: int

    def banner(self) -> str:
        said = f"user {DEMO_USER} with {self.corpus_chunks} chunks of {CORPUS}"
        others = self.documents - 1
        if others > 0:
            said += (
                f" and {self.total_chunks - self.corpus_chunks} of {others} other "
                f"document{'s' if others > 1 else ''} ({self.total_chunks} chunks in all)"
            )
        return said


async def ensure_corpus(app: web.Application) -> DemoCorpus:
    """Ingests the bundled corpus for a demo user who has nothing yet (once); says what the
    user has."""
    svc = app[BACKEND][SERVICES]
    async with svc.db.conn() as conn:
        empty = await conn.total_chunks(DEMO_USER) == 0
    if empty:
        text = resources.files("deepmemory_service").joinpath(f"data/{CORPUS}").read_text()
        await documents.ingest(svc.corpora, DEMO_USER, [DocumentText(text, CORPUS)])
    async with svc.db.conn() as conn:
        listed = await conn.list_documents(DEMO_USER, 1000)
        total = await conn.total_chunks(DEMO_USER)
        count = await conn.document_count(DEMO_USER)
    corpus = next((d.chunk_count for d in reversed(listed) if d.title == CORPUS), 0)
    return DemoCorpus(corpus, total, count)


async def announce(app: web.Application) -> None:
    from deepmemory_service.gateway.auth import mint_token

    settings = app[SETTINGS]
    has = (await ensure_corpus(app)).banner() if BACKEND in app else f"user {DEMO_USER}"
    token = mint_token(settings, DEMO_USER, TTL_S)
    # a wildcard listen address is no place to point a browser at
    wildcard = settings.http.host in ("0.0.0.0", "::")  # noqa: S104  # compared, not bound
    host = "127.0.0.1" if wildcard else settings.http.host
    link = f"http://{host}:{settings.http.port}/login?token={token}"
    # the link is for the person at this terminal, so it goes to stdout, never to the logs
    print(
        f"\nDeep Memory demo: {has}.\nOpen this link to log in (valid 7 days):\n\n  {link}\n",
        file=sys.stdout,
        flush=True,
    )
