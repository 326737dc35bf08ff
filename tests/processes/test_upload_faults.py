"""Uploads are all-or-nothing across the catalog and the vector store, whatever happens to the
process or the disk: a serving process killed with SIGKILL during uploads (at random points,
and while it has a file of the store open for writing), and a store on a filesystem of a
few MiB that fills up. Each ends with searches, an upload and a
generate that all work, and the catalog and the store in line.

`scripts/crash_soak --uploads` repeats the kill test with new random kill points.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from deepmemory_service.storage.store import ChunkStore
from tests.cluster import Instance, signal_while_writing

KILLS = int(os.environ.get("DEEPMEMORY_TEST_UPLOAD_KILLS", "6"))
SEED = int(os.environ.get("DEEPMEMORY_TEST_SEED", "11"))
WORDS = [
    "lease",
    "actor",
    "vector",
    "catalog",
    "lock",
    "chunk",
    "store",
    "commit",
    "crash",
    "disk",
    "index",
    "query",
    "model",
    "adapter",
    "stream",
    "event",
    "replay",
    "backoff",
    "token",
    "gateway",
    "supervisor",
    "snapshot",
    "version",
]


def documents(tag: str, n: int, paragraphs: int) -> list[dict[str, str]]:
    """`n` documents titled `tag …`, each `paragraphs` paragraphs of ~600 characters."""
    rng = random.Random(tag)
    return [
        {
            "title": f"{tag} {d}",
            "text": "\n\n".join(
                " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(80))
                for _ in range(paragraphs)
            ),
        }
        for d in range(n)
    ]


async def upload(instance: Instance, user: uuid.UUID, docs: list[dict[str, str]]) -> Any:
    return await instance.call("POST", "/documents", json={"user_id": str(user), "documents": docs})


async def store_in_line(
    instance: Instance,
    db_url: str,
    store: ChunkStore,
    user: uuid.UUID,
    query: str = "lease3 vector7 crash",
    k: int = 50,
) -> tuple[dict[str, int], list[int], list[int]]:
    """The catalog's documents are whole, `store` (read by a client of this process, as a
    third instance would) at the catalog's version holds exactly the catalog's chunks, and
    a search answers with some of them. Returns the documents' chunk counts by title, the
    catalog's chunk ids and the chunks the search found."""
    conn = await asyncpg.connect(db_url)
    try:
        docs = await conn.fetch(
            "SELECT d.title, d.chunk_count, count(c.id) AS chunks FROM documents d "
            "LEFT JOIN chunks c ON c.document_id = d.id WHERE d.user_id = $1 GROUP BY d.id",
            user,
        )
        ids = [
            r["id"]
            for r in await conn.fetch("SELECT id FROM chunks WHERE user_id = $1 ORDER BY id", user)
        ]
        corpus = await conn.fetchrow(
            "SELECT total_chunks, store_version FROM corpora WHERE user_id = $1", user
        )
    finally:
        await conn.close()
    assert all(d["chunk_count"] == d["chunks"] for d in docs), "a document is in pieces"
    assert corpus["total_chunks"] == len(ids)
    snapshot = await store.read(corpus["store_version"], corpus["total_chunks"])
    assert snapshot.ids.tolist() == ids, "the store's version is not the catalog's chunks"

    code, found = await instance.call(
        "GET", "/search", params={"user_id": str(user), "q": query, "k": str(k)}
    )
    assert code == 200, found
    assert found["results"], "a search found nothing"
    hits = [r["chunk_id"] for r in found["results"]]
    assert set(hits) <= set(ids)
    return {d["title"]: d["chunks"] for d in docs}, ids, hits


async def assert_in_line(
    instance: Instance, db_url: str, stores: Path, user: uuid.UUID
) -> dict[str, int]:
    """`store_in_line` for a local store under `stores`."""
    store = ChunkStore(str(stores / str(user)), "hashing", 1024)
    chunks, _, _ = await store_in_line(instance, db_url, store, user)
    return chunks


def versions(stores: Path, user: uuid.UUID) -> list[str]:
    return sorted(p.name for p in (stores / f"{user}.versions").iterdir())


async def end_with_upload_and_generate(
    instance: Instance, db_url: str, stores: Path, user: uuid.UUID
) -> None:
    code, body = await upload(instance, user, documents("after", 2, 2))
    assert code == 201, body
    await assert_in_line(instance, db_url, stores, user)
    code, body = await instance.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 1}
    )
    assert code == 202, body
    run = await instance.until(user, body["training_run_id"], "generated", within=120)
    assert run["generated_chunks"] == run["total_chunks"] > 0


async def test_kill_9_during_uploads_leaves_catalog_and_store_in_line(
    cluster: Any, tmp_path: Path
) -> None:
    start, db_url, _ = cluster
    rng = random.Random(SEED)
    instance: Instance = await start()
    stores = tmp_path / "data" / "stores"
    user = uuid.uuid4()
    code, body = await upload(instance, user, documents("base", 3, 4))
    assert code == 201, body
    # how long a normal upload of this size takes here: the kills land across it
    started = time.monotonic()
    code, body = await upload(instance, user, documents("timed", 30, 12))
    assert code == 201, body
    upload_s = time.monotonic() - started

    outcomes = {"whole": 0, "absent": 0, "killed writing": 0}
    kill = 0
    # every other kill at a random moment, the others while a file of the store is open for
    # writing; on a busy machine the watch can miss a short write, so kills go on (twice as
    # many again at most: once, the first twelve all missed) until one has landed while
    # writing. Each is checked alike
    while kill < KILLS or (outcomes["killed writing"] == 0 and kill < 3 * KILLS):
        tag = f"killed{kill}"
        sending = asyncio.create_task(upload(instance, user, documents(tag, 30, 12)))
        if kill % 2 and kill < KILLS:
            await asyncio.sleep(rng.uniform(0.05, 1.1) * upload_s)
            instance.kill()
        elif await asyncio.to_thread(
            signal_while_writing, stores, instance.proc.pid, signal.SIGKILL, sending.done
        ):
            outcomes["killed writing"] += 1
        instance.kill()
        with contextlib.suppress(Exception):
            await sending  # the connection died with the process, or the reply came first
        instance = await start()
        chunks = await assert_in_line(instance, db_url, stores, user)
        present = [title for title in chunks if title.startswith(f"{tag} ")]
        assert len(present) in (0, 30), f"{len(present)} of the 30 documents of {tag} stored"
        outcomes["whole" if present else "absent"] += 1
        kill += 1
    assert outcomes["absent"] >= 1, f"no kill landed before an upload's commit: {outcomes}"
    assert outcomes["killed writing"] >= 1, f"no kill landed while writing: {outcomes}"

    await end_with_upload_and_generate(instance, db_url, stores, user)
    # versions nobody can read any more were cleared away: the current one and the one before
    assert len(versions(stores, user)) <= 2, versions(stores, user)


# --------------------------------------------------------------------------- a full disk


def _can(*command: str) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def tiny_filesystem(folder: Path, size_mib: int) -> Iterator[tuple[str, list[str]]]:
    """`folder` on a tmpfs of `size_mib` MiB: mounted here when this process may (root), or
    else in a mount namespace of its own that the service is started in (the returned
    wrapper). Skips the test, saying why, where neither is possible."""
    folder.mkdir(parents=True, exist_ok=True)
    if _can("mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)):
        try:
            yield "mounted here", []
        finally:
            if not _can("umount", str(folder)):
                _can("umount", "-l", str(folder))
        return
    shell = 'mount -t tmpfs -o "size=$1" tmpfs "$0" && shift && exec "$@"'
    wrapper = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell]
    probe = [*wrapper, str(folder), f"{size_mib}m", "true"]
    if shutil.which("unshare") and _can(*probe):
        yield (
            "mounted in the service's own mount namespace",
            [*wrapper, str(folder), f"{size_mib}m"],
        )
        return
    pytest.skip(
        "NOT TESTED: a full disk under the vector stores. This machine can neither mount a "
        "tmpfs (not root) nor make a user and mount namespace (unshare --user --mount); "
        "run the suite as root or where unprivileged user namespaces are allowed"
    )


async def test_a_full_disk_under_the_stores_loses_no_upload(cluster: Any, tmp_path: Path) -> None:
    start, db_url, _ = cluster
    stores = tmp_path / "data" / "stores"
    with tiny_filesystem(stores, 6) as (how, wrapper):
        instance: Instance = await start(wrapper=wrapper)
        # the folder as the service sees it (its own mount namespace, when it has one)
        seen = Path(f"/proc/{instance.proc.pid}/root{stores}")
        ballast = seen / "ballast"
        ballast.write_bytes(b"\0" * 1024 * 1024)  # freed later: space an operator makes
        user = uuid.uuid4()
        code, body = await upload(instance, user, documents("base", 4, 4))
        assert code == 201, (how, body)

        full = None
        for n in range(60):
            code, body = await upload(instance, user, documents(f"more{n}", 6, 6))
            if code != 201:
                full = n
                break
        assert full is not None, f"the store never filled its {how} tmpfs"
        assert code == 507, body
        assert body["detail"] == (
            "No space left on the disk of this user's vector store; nothing was stored"
        )
        assert str(stores) not in str(body)
        chunks = await assert_in_line(instance, db_url, seen, user)
        assert not any(title.startswith(f"more{full} ") for title in chunks)
        # still full: refused again, nothing half-stored
        code, body = await upload(instance, user, documents("refused", 6, 6))
        assert code == 507, body
        await assert_in_line(instance, db_url, seen, user)

        ballast.unlink()
        await end_with_upload_and_generate(instance, db_url, seen, user)
        instance.kill()
        if not wrapper:  # (a tmpfs of the service's own namespace ends with it)
            # a restart finds the same store, in line
            instance = await start()
            await assert_in_line(instance, db_url, stores, user)
            instance.kill()
