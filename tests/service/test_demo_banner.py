"""`serve --demo`'s banner says what the demo user has: the bundled corpus's chunks as the
corpus's, and the user's other documents apart."""

from __future__ import annotations

from typing import Any

import pytest

from deepmemory_service import demo
from deepmemory_service.api.keys import BACKEND, SERVICES
from tests.conftest import Api


async def test_the_banner_counts_the_corpus_apart_from_the_users_own_documents(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    app: Any = api.client.app
    first = await demo.ensure_corpus(app)
    assert first.documents == 1
    assert first.corpus_chunks == first.total_chunks > 0
    corpus = first.corpus_chunks
    assert first.banner() == f"user {demo.DEMO_USER} with {corpus} chunks of {demo.CORPUS}"

    # the user adds their own documents: the corpus is not ingested again, and its chunks
    # stay its own in the banner
    await api.ingest(demo.DEMO_USER, 3)
    await demo.announce(app)
    out = capsys.readouterr().out
    assert (
        f"Deep Memory demo: user {demo.DEMO_USER} with {corpus} chunks of {demo.CORPUS} and 3 "
        f"of 3 other documents ({corpus + 3} chunks in all).\n"
    ) in out
    async with app[BACKEND][SERVICES].db.conn() as conn:
        assert await conn.document_count(demo.DEMO_USER) == 4
