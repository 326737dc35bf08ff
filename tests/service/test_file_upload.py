"""POST /documents/file: a file's bytes as one document, decoded by the service as the
command line decodes a file (byte-order marks, UTF-8, a legacy encoding only when certain),
or a 422 naming why it is not text; through the gateway as the page sends it."""

from __future__ import annotations

import codecs
import gzip
import uuid
from typing import Any

import attrs

from deepmemory_service.gateway.auth import mint_token
from tests.conftest import Api

RECETTE = (
    "Crème brûlée\n\nIngrédients : 50 cl de crème fraîche, six jaunes, 100 g de sucre.\n\n"
    "Préchauffer le four à 150 °C et cuire au bain-marie.\n"
)


async def send(api: Api, user: uuid.UUID, name: str, data: bytes, **params: str) -> tuple[int, Any]:
    return await api.call(
        "POST",
        "/documents/file",
        params={"user_id": str(user), "name": name, **params},
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )


async def stored_texts(api: Api, user: uuid.UUID, query: str) -> list[str]:
    code, found = await api.call(
        "GET", "/search", params={"user_id": str(user), "q": query, "k": "5"}
    )
    assert code == 200, found
    return [hit["text"] for hit in found["results"]]


async def test_a_file_is_stored_as_its_author_wrote_it_whatever_its_encoding(
    api: Api, user_id: uuid.UUID
) -> None:
    for name, data, encoding in [
        ("recette-latin1.txt", RECETTE.encode("latin-1"), "cp1252"),
        ("recette-utf16.txt", codecs.BOM_UTF16_LE + RECETTE.encode("utf-16-le"), "utf-16-le"),
        ("recette-utf8.md", RECETTE.encode(), "utf-8"),
    ]:
        code, body = await send(api, user_id, name, data)
        assert code == 201, body
        assert (body["title"], body["encoding"], body["unchanged"]) == (name, encoding, False)
        assert body["chunks"] == 1
        uuid.UUID(body["document_id"])
    # the three are one text: each is stored as written, never with U+FFFD
    texts = await stored_texts(api, user_id, "crème brûlée")
    assert len(texts) == 3
    assert all("Crème brûlée" in t and "\ufffd" not in t for t in texts), texts
    code, listing = await api.call("GET", "/documents", params={"user_id": str(user_id)})
    assert code == 200
    assert [d["title"] for d in listing["documents"]] == [
        "recette-utf8.md",
        "recette-utf16.txt",
        "recette-latin1.txt",
    ]
    assert listing["max_file_bytes"] == api.services.settings.uploads.max_file_bytes


async def test_a_file_that_is_not_text_is_refused_saying_why_and_nothing_is_stored(
    api: Api, user_id: uuid.UUID
) -> None:
    for data, detail in [
        (b"", "body: the file is empty"),
        (b"  \n\t", "body: the file holds only white space"),
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "body: not text: it holds NUL bytes: a binary file, or UTF-16 without a "
            "byte-order mark",
        ),
        (
            b"caf\xe9",
            "body: not text: not UTF-8, and its encoding cannot be told for certain: it reads "
            'as "café" in cp1252 or as "cafķ" in cp775; save it as UTF-8 and add it again',
        ),
    ]:
        code, body = await send(api, user_id, "x.txt", data)
        assert (code, body) == (422, {"detail": detail})
    for params, detail in [
        ({"name": " "}, "name: field required"),
        ({"name": "n" * 501}, "name: at most 500 characters, got 501"),
        ({"name": "a\x00b"}, "name: must not contain NUL characters"),
        (
            {"name": "a.txt", "skip_unchanged": "yes"},
            "skip_unchanged: must be true or false, got 'yes'",
        ),
    ]:
        code, body = await api.call(
            "POST",
            "/documents/file",
            params={"user_id": str(user_id), **params},
            data=b"text",
        )
        assert (code, body) == (422, {"detail": detail})
    code, listing = await api.call("GET", "/documents", params={"user_id": str(user_id)})
    assert (listing["total_documents"], listing["total_chunks"]) == (0, 0)


async def test_a_file_is_one_document_however_large_up_to_its_own_limit(
    api_factory: Any, settings: Any, user_id: uuid.UUID
) -> None:
    # other bodies stay under a small http.max_body_bytes; a file has its own limit
    small = attrs.evolve(
        settings,
        http=attrs.evolve(settings.http, max_body_bytes=16_384),
        uploads=attrs.evolve(settings.uploads, max_file_bytes=200_000),
    )
    api: Api = await api_factory(small)
    text = "\n\n".join(
        f"## Part {i}\n\nLeases, heartbeats and sweepers, part {i}." for i in range(2000)
    )
    data = text.encode()
    assert 16_384 < len(data) < 200_000
    code, body = await send(api, user_id, "big.md", data)
    assert code == 201, body
    assert body["chunks"] > 20
    code, listing = await api.call("GET", "/documents", params={"user_id": str(user_id)})
    assert [(d["title"], d["chunk_count"]) for d in listing["documents"]] == [
        ("big.md", body["chunks"])
    ]
    # one byte over the file limit, sent as is or as gzip that inflates past it
    over = b"a" * 200_001
    code, refused = await send(api, user_id, "over.txt", over)
    assert (code, refused) == (413, {"detail": "Request body too large: the limit is 200000 bytes"})
    code, refused = await api.call(
        "POST",
        "/documents/file",
        params={"user_id": str(user_id), "name": "over.txt"},
        data=gzip.compress(over),
        headers={"Content-Encoding": "gzip"},
    )
    assert (code, refused) == (413, {"detail": "Request body too large: the limit is 200000 bytes"})
    # a JSON body keeps its own limit
    code, refused = await api.call(
        "POST",
        "/documents",
        json={"user_id": str(user_id), "documents": [{"text": "x" * 20_000}]},
    )
    assert code == 413


async def test_through_the_gateway_the_same_file_is_unchanged_the_second_time(
    api: Api, user_id: uuid.UUID
) -> None:
    token = mint_token(api.services.settings, user_id, 600)
    other = uuid.uuid4()
    replies = []
    for _ in range(2):
        async with api.client.post(
            "/api/documents/file",
            # a user_id in the query is replaced by the token's
            params={"name": "recette.txt", "skip_unchanged": "true", "user_id": str(other)},
            data=RECETTE.encode("latin-1"),
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            replies.append((resp.status, await resp.json()))
    (code1, first), (code2, second) = replies
    assert (code1, first["unchanged"], first["encoding"]) == (201, False, "cp1252")
    assert (code2, second["unchanged"], second["chunks"]) == (201, True, 0)
    assert "document_id" not in second
    _, listing = await api.call("GET", "/documents", params={"user_id": str(user_id)})
    assert [d["title"] for d in listing["documents"]] == ["recette.txt"]
    _, nothing = await api.call("GET", "/documents", params={"user_id": str(other)})
    assert nothing["total_documents"] == 0
