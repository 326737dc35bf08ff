"""A local store's versions, one folder each: `<path>.versions/<version>/` holds a whole
dataset, and `<path>` is a symbolic link to the newest published one (so
`deeplake.load(<path>)` opens the store as it stands).

The next version starts as a copy of the one before made of hard links (no data is
copied), and every write goes through `deeplake_compat.atomic_local_provider` (write
beside, fsync, rename): a file shared with an older version is replaced, never written
through, and no file is ever torn. `finish` syncs the folder before the catalog may
publish it. A crash or a full disk leaves an unpublished folder, removed by the next write.

A folder no reader needs leaves the versions by one rename into `<path>.trash/` and is
removed there by a daemon thread: removing a version's files (tens of hard links and the
chunks the next version replaced) took 100-200 ms on this project's disk, which an upload
need not wait for. What a crash leaves in the trash is removed with the next folder put there.

Why not deeplake's own version control (a commit per upload, `reset` for a damaged HEAD):
its reads walk the commit chain once per chunk (`ChunkEngine.get_chunk_commit`), so a store
of K uploads costs O(K²) to read. Measured on this machine: after 300 uploads of ten chunks,
one upload took 570 ms (215 ms for the first) and reading the store 20 s; with versions as
folders, 110 ms per upload and a 0.24 s read at the same point.

A store written before versions (a plain dataset folder at `<path>`) is taken over as its
first version when it is whole, and rebuilt from the catalog when it is not.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import posixpath
import secrets
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

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

T = TypeVar("T")

SUFFIX = ".versions"
TRASH = ".trash"


def number(version: str) -> int:
    return int(version.split("-", 1)[0])


def _next(base: str | None) -> str:
    """Numbered for order; the random tail keeps two attempts at the same number (a writer
    that lost its lock mid-write, and the next one) out of each other's folders."""
    return f"{number(base) + 1 if base else 1:08d}-{secrets.token_hex(3)}"


def _link_tree(source: Path, target: Path) -> set[str]:
    """`target` as a copy of `source` made of hard links; its files, as paths relative to
    it (for `deeplake_compat.open_local`). In strings, not `Path`s: a version has a file
    per chunk of each tensor, hundreds in a large store, and pathlib's parsing cost more
    than the links."""
    keys: set[str] = set()
    top = str(source)
    for folder, _dirs, files in os.walk(top):
        rel = os.path.relpath(folder, top)
        into = str(target) if rel == "." else os.path.join(target, rel)
        os.makedirs(into, exist_ok=True)
        for name in files:
            if not name.endswith(".tmp"):
                os.link(os.path.join(folder, name), os.path.join(into, name))
                keys.add(name if rel == "." else posixpath.join(rel, name))
    return keys


def _empty(trash: Path) -> None:
    for entry in list(trash.iterdir()) if trash.is_dir() else []:
        shutil.rmtree(entry, ignore_errors=True)


def _discard(folder: Path, trash: Path) -> None:
    """`folder` out of its place now (one rename), its files removed in the background."""
    try:
        trash.mkdir(exist_ok=True)
        folder.rename(trash / f"{folder.name}-{secrets.token_hex(3)}")
    except FileNotFoundError:
        return
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return
    threading.Thread(target=_empty, args=(trash,), name="store-trash", daemon=True).start()


# fsyncs at once: the file system commits them together (one by one, the ~30 of a version
# took 250-350 ms on this project's disk)
SYNC_THREADS = 16
_syncing: concurrent.futures.ThreadPoolExecutor | None = None


def _fsync_tree(root: Path, files: set[str]) -> None:
    """`files` (written, not yet synced) and every folder's entries on disk, all at once;
    returns when all are."""
    global _syncing
    if _syncing is None:
        _syncing = concurrent.futures.ThreadPoolExecutor(SYNC_THREADS, "fsync")
    paths = [*files, *(folder for folder, _dirs, _files in os.walk(root)), str(root.parent)]
    for done in [_syncing.submit(_fsync, path) for path in paths]:
        done.result()


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # written, then removed (deeplake's lock file): its folder's
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@attrs.define
class FolderWriter(DatasetWriter):
    folder: Path

    _written: set[str] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        # parts appended one after another are written once, at `finish`: deeplake would
        # otherwise rewrite (and fsync) each tensor's last chunk after every part
        self.ds.storage.autoflush = False
        # and synced together there: nothing reads this folder before `finish` returns
        self.ds.base_storage.deferred = self._written

    def finish(self) -> str:
        self.flush()
        _fsync_tree(self.folder, self._written)
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

    @property
    def _trash(self) -> Path:
        return Path(self.path + TRASH)

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
            files = _link_tree(source, folder)
            ds = deeplake_compat.open_local(str(folder), read_only=False, files=files)
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
                _discard(entry, self._trash)

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
                        _discard(entry, self._trash)
        except OSError as exc:
            log.warning("vector store link not updated", error=str(exc))

    def newest(self) -> str | None:
        link = Path(self.path)
        return Path(os.readlink(link)).name if link.is_symlink() else None


# writers begun in this process (the upload worker's write lane), by key: a version is
# begun, appended to part by part as its vectors come, and finished in calls that follow
# one another on that lane's one process
_writers: dict[str, FolderWriter] = {}


def _worker_call(call: Callable[[], T]) -> T:
    """What a call in a worker process raises crosses back pickled: a full disk is told
    here, and any other failure is a plain `RuntimeError` naming it."""
    try:
        return call()
    except (StoreDamaged, StoreError):
        raise
    except Exception as exc:
        if disk_full(exc):
            raise StoreFull(NO_SPACE) from None
        raise RuntimeError(f"writing a store version failed: {type(exc).__name__}: {exc}") from None


class WriterLost(StoreError):
    """The worker writing an upload's version died (and was replaced) during the upload:
    nothing was stored; the client may send it again."""

    status = 503
    headers = MappingProxyType({"Retry-After": "1"})


def _writer(key: str) -> FolderWriter:
    writer = _writers.get(key)
    if writer is None:  # the worker was replaced between two calls of one upload
        raise WriterLost("The upload was interrupted and nothing was stored; retry it")
    return writer


def begin_version(
    path: str, embedder: str, dimension: int, base: str | None, base_rows: int, last_id: int | None
) -> str:
    """`LocalVersions.begin` in the worker: the key of the writer, for the calls below."""
    writer = _worker_call(
        lambda: LocalVersions(path, embedder, dimension).begin(base, base_rows, last_id)
    )
    key = secrets.token_hex(8)
    _writers[key] = writer
    return key


def append_version(key: str, rows: Rows) -> None:
    writer = _writer(key)
    try:
        _worker_call(lambda: writer.append(rows))
    except BaseException:
        abandon_version(key)
        raise


def finish_version(key: str) -> str:
    """The version whole and synced: its name, to publish."""
    writer = _writer(key)
    try:
        return _worker_call(writer.finish)
    except BaseException:
        abandon_version(key)
        raise
    finally:
        _writers.pop(key, None)


def abandon_version(key: str) -> None:
    writer = _writers.pop(key, None)
    if writer is not None:
        writer.abandon()
