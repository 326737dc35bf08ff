"""Vector stores in an S3-compatible bucket (s3://), against a real S3 API the suite starts
itself (moto's server, `tests/s3.py`): versions as commits that any instance reads and no
late writer replaces, chains kept short, an unreachable bucket answered with a 503 and never
taken for damage, a damaged store rebuilt, the trained model kept in the bucket, and paths or
credentials that cannot work refused at start-up with one line (never a local folder named
after the URL).

Each upload to the bucket costs seconds here (about a hundred requests to a server written
in Python), so these tests keep their stores small and few."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from deepmemory_service.platform.config import ConfigError, Settings, load_settings
from deepmemory_service.storage import object_versions
from deepmemory_service.storage.dataset import Rows
from deepmemory_service.storage.object_store import UNREACHABLE, ObjectStore, StoreUnreachable
from deepmemory_service.storage.store import ChunkStore
from deepmemory_service.testing.client import free_port
from deepmemory_service.testing.object_store import ObjectStoreServer
from tests.conftest import Api
from tests.service.test_training import (
    NOISE,
    NoisyGenerator,
    noisy_documents,
    right_answers,
    seeded,
)

DIM = 16


def rows(start: int, n: int) -> Rows:
    rng = np.random.default_rng(start)
    return Rows(
        list(range(start, start + n)),
        [f"chunk {i}" for i in range(start, start + n)],
        rng.standard_normal((n, DIM)).astype(np.float32),
        [{"position": i} for i in range(start, start + n)],
    )


def instance_store(path: str, **store: Any) -> ChunkStore:
    """The store at `path` as one instance sees it: its own client of the bucket."""
    settings = load_settings({}, overrides={f"store.{k}": v for k, v in store.items()})
    return ChunkStore(path, "hashing", DIM, remote=ObjectStore(settings.store))


def in_bucket(settings: Settings, bucket: str, **store: Any) -> Settings:
    """`settings` with every user's store in `bucket`."""
    return attrs.evolve(
        settings,
        store=attrs.evolve(settings.store, path=f"s3://{bucket}/stores/{{user_id}}", **store),
    )


async def test_versions_are_commits_in_the_bucket_that_another_instance_reads(
    s3: ObjectStoreServer, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = f"s3://{bucket}/stores/u1"
    writer = instance_store(path)
    v1 = await writer.append(rows(1, 8))
    v2 = await writer.append(rows(9, 4))
    # one generation, two commits of it
    assert v1.split("@")[0] == v2.split("@")[0]
    assert v1 != v2

    reader = instance_store(path)
    first, second = await reader.read(v1, 8), await reader.read(v2, 12)
    assert first.ids.tolist() == list(range(1, 9))
    assert second.ids.tolist() == list(range(1, 13))
    assert np.array_equal(second.vectors[8:], rows(9, 4).vectors)
    assert second.texts[-1] == "chunk 12"
    # everything is in the bucket, under the store's own prefix; nothing in the working
    # directory (deeplake takes a path it does not know for a local folder)
    assert all(key.startswith("stores/u1/") for key in s3.keys(bucket))
    assert os.listdir(tmp_path) == []


async def test_a_writer_that_lost_its_lock_never_replaces_a_published_version(
    s3: ObjectStoreServer, bucket: str
) -> None:
    path = f"s3://{bucket}/stores/u1"
    store = instance_store(path)
    v1 = await store.append(rows(1, 10))
    # a writer that loses the user's lock mid-write, and the one that takes it over: both
    # build on v1 (on one branch HEAD they would commit under one id, the late one's rows
    # replacing the published ones)
    late = await store.begin(v1, 10, None)
    on_time = await store.write(v1, 10, None, rows(11, 4))
    await late.append(rows(11, 7))
    late_version = await late.finish()
    assert late_version != on_time
    fresh = instance_store(path)
    assert (await fresh.read(on_time, 14)).ids.tolist() == list(range(1, 15))
    assert (await fresh.read(late_version, 17)).rows == 17


async def test_a_long_commit_chain_is_compacted_and_old_generations_deleted(
    s3: ObjectStoreServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_versions, "COMPACT_AFTER", 2)
    path = f"s3://{bucket}/stores/u1"
    store = instance_store(path)
    version, n, generations = await store.append(rows(1, 6)), 6, []
    for _ in range(5):
        version = await store.append(rows(n + 1, 2))
        n += 2
        generations.append(version.split("@")[0])
    # a new generation every two commits; the ones no reader can be on are gone
    assert len(set(generations)) >= 3
    left = {key.split("/")[2] for key in s3.keys(bucket, "stores/u1/g")}
    assert left <= set(generations[-4:])
    assert len(left) <= 2
    snapshot = await instance_store(path).read(version, n)
    assert snapshot.ids.tolist() == list(range(1, n + 1))
    assert np.array_equal(snapshot.vectors[:6], rows(1, 6).vectors)
    # the metadata came along too
    versions = object_versions.ObjectVersions(path, store.remote, "hashing", DIM)  # type: ignore[arg-type]
    opened = await store.blocking(versions.open, version)
    metadata = await store.blocking(lambda: opened.metadata.data()["value"])
    assert [m["position"] for m in metadata] == list(range(1, n + 1))


async def test_an_operation_is_cut_when_the_bucket_stops_answering_not_when_it_is_long(
    s3: ObjectStoreServer, bucket: str
) -> None:
    path = f"s3://{bucket}/stores/u1"
    version = await instance_store(path).append(rows(1, 20))
    # each request may wait a minute, but the operation only 1 s without any answer
    limits = {"timeout_s": 1.0, "read_timeout_s": 60.0, "attempts": 1}
    store = instance_store(path, **limits)

    def slow(**_kwargs: Any) -> None:
        time.sleep(0.25)  # each request answered late, but answered

    assert store.remote is not None
    store.remote.client.meta.events.register("before-send.s3", slow)
    started = time.monotonic()
    assert (await store.read(version, 20)).rows == 20
    assert time.monotonic() - started > 2 * limits["timeout_s"], "too quick to show anything"

    s3.pause()
    started = time.monotonic()
    with pytest.raises(StoreUnreachable):
        await instance_store(path, **limits).read(version, 20)
    assert time.monotonic() - started < 30, "the read waited for its request's read timeout"


async def call(api: Api, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """Status, JSON body and headers of a backend call."""
    async with api.client.request(method, f"/v1/api{path}", headers=api.headers, **kwargs) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_an_unreachable_bucket_is_a_503_with_retry_after_and_nothing_is_lost(
    api_factory: Any, settings: Settings, s3: ObjectStoreServer, bucket: str, user_id: uuid.UUID
) -> None:
    short = in_bucket(settings, bucket, read_timeout_s=1.0, connect_timeout_s=1.0, attempts=1)
    a: Api = await api_factory(short)
    await a.ingest(user_id, 6)
    search = {"user_id": str(user_id), "q": "advisory locks", "k": 10}
    code, found, _ = await call(a, "GET", "/search", params=search)
    assert code == 200
    assert len(found["results"]) == 6
    async with a.services.db.conn() as conn:
        before = await conn.corpus(user_id)
    assert before is not None
    assert before.version is not None

    s3.pause()
    code, body, headers = await call(
        a, "POST", "/documents", json={"user_id": str(user_id), "documents": [{"text": "x y"}]}
    )
    assert (code, body, headers.get("Retry-After")) == (503, {"detail": UNREACHABLE}, "5")
    # an instance that has not read this store yet cannot search it; the one that has read
    # the catalog's version searches on from memory
    b: Api = await api_factory(short)
    code, body, headers = await call(b, "GET", "/search", params=search)
    assert (code, body, headers.get("Retry-After")) == (503, {"detail": UNREACHABLE}, "5")
    code, found, _ = await call(a, "GET", "/search", params=search)
    assert code == 200
    assert len(found["results"]) == 6

    s3.resume()
    code, found, _ = await call(b, "GET", "/search", params=search)
    assert code == 200
    assert len(found["results"]) == 6
    assert await a.ingest(user_id, 2) == 8
    async with a.services.db.conn() as conn:
        after = await conn.corpus(user_id)
    # the failed upload left nothing; the store was never taken for damaged and rebuilt
    assert after is not None
    assert after.rows == 8
    assert after.version is not None
    assert after.version.split("@")[0] == before.version.split("@")[0]


async def test_a_store_gone_from_the_bucket_is_rebuilt_from_the_catalog(
    api_factory: Any, settings: Settings, s3: ObjectStoreServer, bucket: str, user_id: uuid.UUID
) -> None:
    api: Api = await api_factory(in_bucket(settings, bucket))
    await api.ingest(user_id, 5)
    client = s3.client()
    for key in s3.keys(bucket, f"stores/{user_id}/g"):
        client.delete_object(Bucket=bucket, Key=key)
    fresh: Api = await api_factory(in_bucket(settings, bucket))
    code, found = await fresh.call(
        "GET", "/search", params={"user_id": str(user_id), "q": "supervisor", "k": 10}
    )
    assert code == 200
    assert len(found["results"]) == 5
    assert s3.keys(bucket, f"stores/{user_id}/g")


async def test_two_instances_share_the_bucket_and_the_model_without_files_of_their_own(
    api_factory: Any,
    settings: Settings,
    s3: ObjectStoreServer,
    bucket: str,
    user_id: uuid.UUID,
    tmp_path: Path,
) -> None:
    """Two instances, each with its own data directory: documents added on one are searched
    on the other, a run generated on one is trained on the other, and the model trained
    there is used by the first; neither keeps a file of the user's store."""

    def instance(name: str) -> Settings:
        return attrs.evolve(
            seeded(in_bucket(settings, bucket, read_timeout_s=1.0, attempts=1)),
            data_dir=str(tmp_path / name),
        )

    a: Api = await api_factory(instance("a"), generator=NoisyGenerator())
    b: Api = await api_factory(instance("b"), generator=NoisyGenerator())
    chunks, docs = noisy_documents()
    code, added = await a.call(
        "POST", "/documents", json={"user_id": str(user_id), "documents": docs}
    )
    assert code == 201, added
    query = {"user_id": str(user_id), "q": "amber3 cobalt3", "k": "3"}
    code, on_a = await a.call("GET", "/search", params=query)
    code_b, on_b = await b.call("GET", "/search", params=query)
    assert (code, code_b) == (200, 200)
    assert on_a == on_b
    assert on_b["results"][0]["text"].startswith("amber3 cobalt3")

    code, body = await b.call(
        "POST", "/deep-memory/generate", json={"user_id": str(user_id), "questions_per_chunk": 4}
    )
    assert code == 202, body
    await b.wait_status(user_id, body["training_run_id"], "generated", timeout=60)
    code, trained = await a.call(
        "POST",
        "/deep-memory/train",
        json={"user_id": str(user_id), "training_run_id": body["training_run_id"]},
    )
    assert code == 202, trained
    run = await a.wait_status(
        user_id, body["training_run_id"], "completed", "training_failed", timeout=120
    )
    assert run["status"] == "completed", run["error_message"]
    _, current = await b.call("GET", "/deep-memory/settings", params={"user_id": str(user_id)})
    assert current["can_enable"] is True, current["can_enable_reason"]
    assert f"stores/{user_id}/deepmemory.npz" in s3.keys(bucket, f"stores/{user_id}/")

    # the model trained on a, through b (and a, through the same model)
    assert await right_answers(b, user_id, chunks, deep_memory=False) <= 3
    with_model = await right_answers(b, user_id, chunks, deep_memory=True)
    assert with_model >= 20
    assert await right_answers(a, user_id, chunks, deep_memory=True) == with_model
    # the bucket gone quiet: b searches on with the model and the version it read
    noisy = {"user_id": str(user_id), "q": f"{NOISE} {chunks[7].split()[2]}", "k": "1"}
    before = await b.call("GET", "/search", params={**noisy, "deep_memory": "true"})
    s3.pause()
    assert await b.call("GET", "/search", params={**noisy, "deep_memory": "true"}) == before
    s3.resume()

    for data_dir in (tmp_path / "a", tmp_path / "b"):
        kept = [p for p in data_dir.rglob("*") if "postgres" not in p.parts]
        assert not [p for p in kept if p.is_file()], kept


def serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`deepmemory-service serve` in `tmp_path`, with only `env` set beside the basics."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEEPMEMORY_", "AWS_")) and k not in ("HOME", "TMPDIR")
    }
    return subprocess.run(
        [sys.executable, "-m", "deepmemory_service", "serve", "--port", str(free_port())],
        env={
            **base,
            "HOME": str(tmp_path),
            "DEEPMEMORY_DATA_DIR": str(tmp_path / "data"),
            "DEEPMEMORY_LOG_FORMAT": "json",
            # off EC2 the credential chain's last step asks 169.254.169.254 and waits
            "AWS_EC2_METADATA_DISABLED": "true",
            **env,
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("aws", "line"),
    [
        (
            {},
            "DEEPMEMORY_STORE_PATH is an s3:// store, but no AWS credentials were found: set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
        ),
        (
            {"AWS_PROFILE": "stores"},
            "DEEPMEMORY_STORE_PATH is an s3:// store, but AWS_PROFILE names no profile: The "
            "config profile (stores) could not be found",
        ),
        (
            {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"},
            "DEEPMEMORY_STORE_PATH is an s3:// store, but its AWS credentials are incomplete: "
            "Partial credentials found in env, missing: AWS_SECRET_ACCESS_KEY",
        ),
    ],
)
def test_an_s3_store_without_credentials_stops_start_up_with_one_line(
    tmp_path: Path, aws: dict[str, str], line: str
) -> None:
    done = serve(tmp_path, {"DEEPMEMORY_STORE_PATH": "s3://stores/users/{user_id}", **aws})
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"deepmemory-service: {line}"]
    # neither a folder named after the URL nor the embedded database were made
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_bucket_that_is_not_there_stops_start_up(
    tmp_path: Path, s3_server: ObjectStoreServer
) -> None:
    done = serve(
        tmp_path,
        {**s3_server.environment(), "DEEPMEMORY_STORE_PATH": "s3://no-such-bucket/s/{user_id}"},
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(
        "deepmemory-service: DEEPMEMORY_STORE_PATH: the bucket no-such-bucket does not exist ("
    )
    assert line.endswith("; credentials from env)")
    assert s3_server.environment()["AWS_SECRET_ACCESS_KEY"] not in done.stderr


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "S3://stores/users/{user_id}",
            "unknown scheme S3:// (a local path, s3://bucket/prefix/{user_id} or "
            "hub://org/name_{user_id}; schemes are lower case)",
        ),
        (
            "minio://stores/users/{user_id}",
            "unknown scheme minio:// (a local path, s3://bucket/prefix/{user_id} or "
            "hub://org/name_{user_id}; schemes are lower case)",
        ),
        (
            "az://container/users/{user_id}",
            "az:// stores are not supported (a local path, s3://bucket/prefix/{user_id} or "
            "hub://org/name_{user_id})",
        ),
        (
            "gcs://bucket/users/{user_id}",
            "gcs:// stores are not supported (a local path, s3://bucket/prefix/{user_id} or "
            "hub://org/name_{user_id})",
        ),
        (
            "s3://{user_id}",
            "an s3:// path names a bucket and a prefix with {user_id} in it: "
            "s3://bucket/stores/{user_id}",
        ),
        (
            "s3://bucket/{data_dir}/{user_id}",
            "an s3:// path cannot hold {data_dir} (a folder of this machine)",
        ),
    ],
)
def test_a_store_path_that_cannot_work_is_refused_naming_the_setting(
    path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"DEEPMEMORY_STORE_PATH": path})
    assert str(refused.value) == f"bad configuration: DEEPMEMORY_STORE_PATH: {message}"


def test_an_unknown_scheme_never_becomes_a_local_folder(tmp_path: Path) -> None:
    done = serve(tmp_path, {"DEEPMEMORY_STORE_PATH": "S3://stores/users/{user_id}"})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "deepmemory-service: bad configuration: DEEPMEMORY_STORE_PATH: unknown scheme S3:// "
        "(a local path, s3://bucket/prefix/{user_id} or hub://org/name_{user_id}; schemes "
        "are lower case)"
    ]
    assert list(tmp_path.iterdir()) == []
    # nor does a store made without the settings' check
    with pytest.raises(ValueError, match="unknown scheme S3://"):
        ChunkStore("S3://stores/users/u1", "hashing", DIM)
