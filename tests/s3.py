"""An S3-compatible server for the tests of s3:// stores, started by the suite itself: moto in
server mode in a process of its own, once per session (it starts in about a second), with a
new bucket per test (a pytest plugin of conftest)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deepmemory_service.testing.object_store import ObjectStoreServer


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ObjectStoreServer]:
    with ObjectStoreServer() as server:
        yield server


@pytest.fixture
def s3(
    s3_server: ObjectStoreServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ObjectStoreServer]:
    """The server, which this process's AWS SDK reaches through its standard variables
    for the test; running again after the test whatever it paused."""
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        yield s3_server
    finally:
        s3_server.resume()


@pytest.fixture
def bucket(s3: ObjectStoreServer) -> str:
    return s3.bucket()
