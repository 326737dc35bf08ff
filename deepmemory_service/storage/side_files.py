"""Small files kept with a user's vector store (the local trainer's model), where every
instance that serves the store reads them: beside a local store's folder on its disk
(`<store>.<name>`), or in an s3:// store's bucket (`<store>/<name>`).

Each is written whole or not at all (a local file is written beside and renamed over the
old one; an object is replaced by one PUT), and carries a stamp that changes with every
write (a local file's modification time, an object's ETag), so a reader can cache what it
read until the stamp changes. The calls are blocking: run them with `ChunkStore.blocking`,
which bounds a bucket's and names its failures.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import attrs

from deepmemory_service.storage.object_store import ObjectStore


class SideFile(Protocol):
    @property
    def name(self) -> str:
        """Where it is, for a cache's key and a log."""
        ...

    def stamp(self) -> str | None:
        """Changes with each write; None when there is no file."""
        ...

    def read(self) -> tuple[str, bytes] | None:
        """The stamp and the contents, read together; None when there is no file."""
        ...

    def write(self, data: bytes) -> None: ...


@attrs.frozen
class LocalSideFile:
    path: Path

    @property
    def name(self) -> str:
        return str(self.path)

    def stamp(self) -> str | None:
        try:
            return str(self.path.stat().st_mtime_ns)
        except FileNotFoundError:
            return None

    def read(self) -> tuple[str, bytes] | None:
        try:
            with self.path.open("rb") as file:
                return str(os.fstat(file.fileno()).st_mtime_ns), file.read()
        except FileNotFoundError:
            return None

    def write(self, data: bytes) -> None:
        self.write_parts([data])

    def write_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        """The file made of `parts`, one after another (a large file is never joined in
        memory first)."""
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as file:
                for part in parts:
                    file.write(part)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)  # readers see the old file or the new one
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


@attrs.frozen
class ObjectSideFile:
    url: str
    store: ObjectStore

    @property
    def name(self) -> str:
        return self.url

    def stamp(self) -> str | None:
        return self.store.stamp(self.url)

    def read(self) -> tuple[str, bytes] | None:
        return self.store.read(self.url)

    def write(self, data: bytes) -> None:
        self.store.write(self.url, data)


class Kept(Protocol):
    """Where a store is (`ChunkStore`)."""

    @property
    def path(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def remote(self) -> ObjectStore | None: ...


def side_file(store: Kept, name: str) -> SideFile:
    """The file `name` kept with `store` (not for a hub:// store, whose files are
    Activeloop's)."""
    if store.kind == "s3":
        if store.remote is None:
            raise ValueError(f"the s3:// store {store.path} has no object store")
        return ObjectSideFile(f"{store.path}/{name}", store.remote)
    if store.kind == "hub":
        raise ValueError(f"a hub:// store keeps no files of this service: {store.path}")
    return LocalSideFile(Path(f"{store.path}.{name}"))
