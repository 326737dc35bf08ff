"""Two real `serve` processes with data directories of their own, sharing only PostgreSQL and
an S3-compatible bucket (moto's server, started by the suite): one killed with SIGKILL at
exact points of an upload's requests to the bucket, the other serving meanwhile; and the
bucket unreachable for 30 s. Each ends with the catalog and the bucket in line, searches, an
upload and a generate working on both, without a restart, and nothing of a user's store on
either instance's disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deepmemory_service.platform.config import load_settings
from deepmemory_service.storage.object_store import UNREACHABLE, ObjectStore
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.testing.object_store import ObjectStoreServer
from tests.cluster import TOKEN, Instance
from tests.processes.test_upload_faults import documents, store_in_line, upload
from tests.s3 import RequestProxy

pytestmark = pytest.mark.slow

OUTAGE_S = float(os.environ.get("DEEPMEMORY_TEST_OUTAGE_S", "30"))
QUERY = "lease3 vector7 crash"


def in_bucket(s3: ObjectStoreServer, bucket: str, data_dir: Path) -> dict[str, str]:
    """An instance's settings: its own data directory (and home), the users' stores in the
    bucket, the AWS SDK's standard variables to reach it."""
    return {
        **s3.environment(),
        "DEEPMEMORY_STORE_PATH": f"s3://{bucket}/stores/{{user_id}}",
        "DEEPMEMORY_DATA_DIR": str(data_dir),
        "HOME": str(data_dir.parent / f"{data_dir.name}-home"),
    }


async def call(instance: Instance, method: str, path: str, **kwargs: Any) -> tuple[int, Any, str]:
    """Status, JSON body and Retry-After of a backend call."""
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
        http.request(method, f"{instance.url}/v1/api{path}", **kwargs) as resp,
    ):
        return resp.status, await resp.json(), resp.headers.get("Retry-After", "")


async def assert_in_line(
    instance: Instance, db_url: str, s3: ObjectStoreServer, bucket: str, user: uuid.UUID
) -> dict[str, int]:
    """`store_in_line` for the user's store in the bucket; the search (k = 100) answers with
    as many of the catalog's chunks as it can."""
    settings = load_settings(
        s3.environment(), overrides={"store.path": f"s3://{bucket}/stores/{{user_id}}"}
    )
    store = ChunkStore(
        settings.store_path(user), "hashing", 1024, remote=ObjectStore(settings.store)
    )
    chunks, ids, hits = await store_in_line(instance, db_url, store, user, QUERY, 100)
    assert len(hits) == min(100, len(ids))
    return chunks


async def end_with_upload_search_and_generate(
    a: Instance, b: Instance, db_url: str, s3: ObjectStoreServer, bucket: str, user: uuid.UUID
) -> None:
    """Both instances serve the user: an upload on each, searches that agree, a run
    generated on one from the chunks the other added."""
    for instance, tag in ((a, "after a"), (b, "after b")):
        code, body = await upload(instance, user, documents(tag, 2, 2))
        assert code == 201, body
    await assert_in_line(a, db_url, s3, bucket, user)
    search = {"user_id": str(user), "q": QUERY, "k": "5"}
    assert await a.call("GET", "/search", params=search) == await b.call(
        "GET", "/search", params=search
    )
    code, body = await b.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user), "questions_per_chunk": 1}
    )
    assert code == 202, body
    run = await b.until(user, body["training_run_id"], "generated", within=120)
    assert run["generated_chunks"] == run["total_chunks"] > 0


def nothing_on_disk(*data_dirs: Path) -> None:
    """No file of a user's store (nor any other) in the instances' data directories."""
    for data_dir in data_dirs:
        files = [p for p in data_dir.rglob("*") if p.is_file()] if data_dir.exists() else []
        assert files == [], files


def put(suffix: str = "") -> Callable[[str, str], bool]:
    """Matches a PUT of a key ending with `suffix`."""
    return lambda method, path: method == "PUT" and path.endswith(suffix)


async def test_kill_9_during_an_upload_to_the_bucket_while_another_instance_serves(
    cluster: Any, s3: ObjectStoreServer, s3_proxy: RequestProxy, bucket: str, tmp_path: Path
) -> None:
    """Instance a reaches the bucket through a proxy that reads its requests, and is killed
    at exact points of an upload: its first write, amid its version's files, at its commit,
    and once the catalog has published it (the `newest.json` hint that follows)."""
    start, db_url, _ = cluster
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    behind_proxy = {**in_bucket(s3, bucket, a_dir), "AWS_ENDPOINT_URL": s3_proxy.endpoint}
    a: Instance = await start(**behind_proxy)
    b: Instance = await start(**in_bucket(s3, bucket, b_dir))
    user = uuid.uuid4()
    code, body = await upload(a, user, documents("base", 3, 2))
    assert code == 201, body
    # an upload's writes, to aim at: the same for every upload of this size on this store
    before = len(s3_proxy.requests)
    code, body = await upload(a, user, documents("measured", 6, 2))
    assert code == 201, body
    puts = [path for method, path in s3_proxy.requests[before:] if method == "PUT"]
    commits = sum(path.endswith("/version_control_info.json") for path in puts)
    assert puts[-1].endswith("/newest.json"), puts[-3:]

    points = [
        ("its first write", put(), 1, "absent"),
        ("amid its version's files", put(), len(puts) // 2, "absent"),
        ("at its commit", put("/version_control_info.json"), commits, "absent"),
        ("after the catalog published it", put("/newest.json"), 1, "whole"),
    ]
    for kill, (where, matches, nth, expected) in enumerate(points):
        tag = f"killed{kill}"
        pid = a.proc.pid
        trap = s3_proxy.trap(matches, nth, lambda: os.killpg(pid, signal.SIGKILL), hold=True)  # noqa: B023
        sending = asyncio.create_task(upload(a, user, documents(tag, 6, 2)))
        async with asyncio.timeout(120):
            await trap.sprung.wait()
        a.kill()
        # the other instance serves the user meanwhile, from the bucket
        code, found = await b.call(
            "GET", "/search", params={"user_id": str(user), "q": QUERY, "k": "3"}
        )
        assert code == 200, found
        with contextlib.suppress(aiohttp.ClientError):
            await sending  # the connection died with the process
        chunks = await assert_in_line(b, db_url, s3, bucket, user)
        present = [title for title in chunks if title.startswith(f"{tag} ")]
        assert len(present) in (0, 6), f"{len(present)} of the 6 documents of {tag} stored"
        assert ("whole" if present else "absent") == expected, f"killed {where}"
        a = await start(**behind_proxy)

    await end_with_upload_search_and_generate(a, b, db_url, s3, bucket, user)
    nothing_on_disk(a_dir, b_dir)


async def test_the_bucket_unreachable_for_30_s_then_served_again_without_a_restart(
    cluster: Any, s3: ObjectStoreServer, bucket: str, tmp_path: Path
) -> None:
    start, db_url, _ = cluster
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a: Instance = await start(**in_bucket(s3, bucket, a_dir))
    b: Instance = await start(**in_bucket(s3, bucket, b_dir))
    user = uuid.uuid4()
    code, body = await upload(a, user, documents("before", 4, 2))
    assert code == 201, body
    search = {"user_id": str(user), "q": QUERY, "k": "100"}
    code, found, _ = await call(b, "GET", "/search", params=search)
    assert code == 200, found
    before = len(found["results"])

    s3.pause()
    paused = time.monotonic()
    rounds = 0
    try:
        while time.monotonic() - paused < OUTAGE_S:
            (
                (up, up_body, up_retry),
                (fresh, fresh_body, fresh_retry),
                (cached, _, _),
            ) = await asyncio.gather(
                call(
                    a,
                    "POST",
                    "/documents",
                    json={"user_id": str(user), "documents": documents("lost", 2, 1)},
                ),
                # a has not read the store yet: it needs the bucket
                call(a, "GET", "/search", params=search),
                # b read the catalog's version before: it searches on from memory
                call(b, "GET", "/search", params=search),
            )
            assert (up, up_body, up_retry) == (503, {"detail": UNREACHABLE}, "5")
            assert (fresh, fresh_body, fresh_retry) == (503, {"detail": UNREACHABLE}, "5")
            assert cached == 200
            rounds += 1
    finally:
        s3.resume()
    assert rounds >= 2, "each refusal took so long that the outage saw fewer than two"

    # the same processes serve again, and nothing of before was lost or half-added
    code, found, _ = await call(a, "GET", "/search", params=search)
    assert code == 200, found
    assert len(found["results"]) == before
    chunks = await assert_in_line(a, db_url, s3, bucket, user)
    assert not [title for title in chunks if title.startswith("lost ")]
    await end_with_upload_search_and_generate(a, b, db_url, s3, bucket, user)
    nothing_on_disk(a_dir, b_dir)
