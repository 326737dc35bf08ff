"""A local store's versions, one folder each: `<path>.versions/<version>/` holds a whole
dataset, and `<path>` is a symbolic link to the newest published one (so
`deeplake.load(<path>)` opens the store as it stands).

The next version starts as a copy of the one before made of hard links (no data is
copied), and every write goes through `deeplake_compat.atomic_local_provider` (write
beside, fsync, rename): a file shared with an older version is replaced, never written
through, and no file is ever torn. `finish` syncs the folder before the catalog may
publish it. A crash or a full disk leaves an unpublished folder, removed by the next write.

Why not deeplake's own version control (a commit per upload, `reset` for a damaged HEAD):
its reads walk the commit chain once per chunk (`ChunkEngine.get_chunk_commit`), so a store
of K uploads costs O(K²) to read. Measured on this machine: after 300 uploads of ten chunks,
one upload took 570 ms (215 ms for the first) and reading the store 20 s; with versions as
folders, 110 ms per upload and a 0.24 s read at the same point.

A store written before versions (a plain dataset folder at `<path>`) is taken over as its
first version when it is whole, and rebuilt from the catalog when it is not.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import attrs
import structlog

from deepmemory_service.storage import deeplake_compat
from deepmemory_service.storage.dataset import (
    NO_SPACE,
    DatasetWriter,
    Rows,
    StoreDamaged,
    StoreError,
    StoreFull,
    check_info,
    check_whole,
    create_tensors,
    disk_full,
    lengths,
)

log = structlog.get_logger(__name__)

SUFFIX = ".versions"


def number(version: str) -> int:
    return int(version.split("-", 1)[0])


def _next(base: str | None) -> str:
    """Numbered for order; the random tail keeps two attempts at the same number (a writer
    that lost its lock mid-write, and the next one) out of each other's folders."""
    return f"{number(base) + 1 if base else 1:08d}-{secrets.token_hex(3)}"


def _link_tree(source: Path, target: Path) -> None:
    """`target` as a copy of `source` made of hard links."""
    for folder, _dirs, files in os.walk(source):
        into = target / Path(folder).relative_to(source)
        into.mkdir(parents=True, exist_ok=True)
        for name in files:
            if not name.endswith(".tmp"):
                os.link(Path(folder) / name, into / name)


def _fsync_tree(root: Path) -> None:
    """Every folder's entries on disk (the files were synced as they were written)."""
    for folder, _dirs, _files in os.walk(root):
        _fsync_dir(Path(folder))
    _fsync_dir(root.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@attrs.define
class FolderWriter(DatasetWriter):
    folder: Path

    def finish(self) -> str:
        self.flush()
        _fsync_tree(self.folder)
        return self.folder.name

    def abandon(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@attrs.define
class LocalVersions:
    path: str
    embedder: str
    dimension: int

    @property
    def _root(self) -> Path:
        return Path(self.path + SUFFIX)

    def open(self, version: str) -> Any:
        folder = self._root / version
        if not (folder / "dataset_meta.json").exists():
            raise StoreDamaged(f"version {version} is missing")
        return deeplake_compat.open_local(str(folder), read_only=True)

    def begin(self, base: str | None, base_rows: int, last_id: int | None) -> FolderWriter:
        self._collect(base)
        if base is not None:
            source = self._root / base
            if not (source / "dataset_meta.json").exists():
                raise StoreDamaged(f"the published version {base} is missing")
        elif self._legacy():
            source = Path(self.path)
            legacy = deeplake_compat.open_local(self.path, read_only=True)
            check_info(legacy, self.embedder, self.dimension)
            check_whole(legacy, base_rows, last_id)
        elif base_rows:
            raise StoreDamaged(f"the catalog has {base_rows} chunks but there is no store")
        else:
            return self._empty()
        folder = self._root / _next(base)
        try:
            _link_tree(source, folder)
            ds = deeplake_compat.open_local(str(folder), read_only=False)
            check_info(ds, self.embedder, self.dimension)
            if lengths(ds) != {base_rows}:
                raise StoreDamaged(f"{lengths(ds)} rows, the catalog {base_rows}")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FolderWriter(ds, base_rows, folder)

    def begin_empty(self) -> FolderWriter:
        self._collect(None)
        return self._empty()

    def _empty(self) -> FolderWriter:
        folder = self._root / _next(None)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            made = deeplake_compat.load().empty(str(folder), verbose=False, lock_enabled=False)
            create_tensors(made, self.embedder, self.dimension)
            made.flush()
            ds = deeplake_compat.open_local(str(folder), read_only=False)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FolderWriter(ds, 0, folder)

    def _collect(self, base: str | None) -> None:
        """Removes folders nobody reads: attempts never published (a crash, a full disk),
        and published versions older than the one before `base` (a reader still on that
        one reads on; one further back has had a whole upload's time to finish)."""
        if not self._root.is_dir():
            return
        base_number = number(base) if base else None
        for entry in self._root.iterdir():
            if entry.name == base:
                continue
            try:
                n = number(entry.name)
            except ValueError:
                continue
            if base_number is None or n >= base_number or n < base_number - 1:
                shutil.rmtree(entry, ignore_errors=True)

    def _legacy(self) -> bool:
        path = Path(self.path)
        return path.is_dir() and not path.is_symlink() and (path / "dataset_meta.json").exists()

    def published(self, version: str) -> None:
        """`<path>` is pointed at `version`; folders no reader can be on are removed. The
        catalog is the truth: a failure here is redone by the next write."""
        link = Path(self.path)
        try:
            if self._legacy():
                aside = link.with_name(f"{link.name}.replaced-{secrets.token_hex(3)}")
                link.rename(aside)
                shutil.rmtree(aside, ignore_errors=True)
            tmp = link.with_name(f"{link.name}.{secrets.token_hex(3)}.link")
            tmp.symlink_to(Path(self._root.name) / version)
            os.replace(tmp, link)
            for entry in self._root.iterdir():
                with contextlib.suppress(ValueError):
                    if number(entry.name) < number(version) - 1:
                        shutil.rmtree(entry, ignore_errors=True)
        except OSError as exc:
            log.warning("vector store link not updated", error=str(exc))

    def newest(self) -> str | None:
        link = Path(self.path)
        return Path(os.readlink(link)).name if link.is_symlink() else None


def write_version(
    path: str,
    embedder: str,
    dimension: int,
    base: str | None,
    base_rows: int,
    last_id: int | None,
    rows: Rows,
) -> str:
    """The version after `base` with `rows` appended, whole and synced; its name. A
    function a worker process runs (`cpu_pool`): what it raises crosses back pickled, so a
    full disk is told here, and any other failure is a plain `RuntimeError` naming it."""
    try:
        writer = LocalVersions(path, embedder, dimension).begin(base, base_rows, last_id)
        try:
            writer.append(rows)
            return writer.finish()
        except BaseException:
            writer.abandon()
            raise
    except (StoreDamaged, StoreError):
        raise
    except Exception as exc:
        if disk_full(exc):
            raise StoreFull(NO_SPACE) from None
        raise RuntimeError(f"writing a store version failed: {type(exc).__name__}: {exc}") from None
