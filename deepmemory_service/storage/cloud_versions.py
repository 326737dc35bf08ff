"""A cloud (hub://) store's versions: deeplake's version-control nodes.

An upload is appended to the dataset's HEAD and flushed; the version the catalog then
publishes is that HEAD's id, which becomes its commit id when the next write commits it
(under the user's lock, before appending). So a commit never comes before the catalog's:
a crash between them leaves no commit the catalog does not know. Readers load
`<path>@<version>`, whose data no later write changes (a write after a commit goes to a new
HEAD). What an interrupted write leaves is put right by the next one: a HEAD too damaged
to load is reset as it loads (`deeplake.load(reset=True)`), and uncommitted changes of a
version the catalog never published are dropped (`Dataset.reset()`).

Each upload adds a commit, and deeplake's reads walk the commit chain per chunk: a cloud
store with many uploads reads more slowly (local stores keep versions as folders instead,
see `local_versions.py`). Activeloop's Deep Memory trains on the dataset's HEAD: the
published version.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs

from deepmemory_service.storage import dataset, deeplake_compat
from deepmemory_service.storage.dataset import StoreDamaged


class CommitWriter(dataset.DatasetWriter):
    def finish(self) -> str:
        self.flush()
        version: str = self.ds.pending_commit_id
        return version

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            if self.ds.has_head_changes:
                self.ds.reset()


@attrs.define
class CloudVersions:
    path: str
    token: str | None = attrs.field(repr=False)
    embedder: str
    dimension: int

    @property
    def _creds(self) -> dict[str, str]:
        return {"token": self.token} if self.token else {}

    def _load(self, address: str | None = None, **kwargs: Any) -> Any:
        path = f"{self.path}@{address}" if address else self.path
        return deeplake_compat.load().load(
            path, verbose=False, lock_enabled=False, **self._creds, **kwargs
        )

    def open(self, version: str) -> Any:
        try:
            return self._load(version, read_only=True)
        except Exception as exc:
            raise StoreDamaged(f"version {version} cannot be opened: {exc!r}") from exc

    def begin(self, base: str | None, base_rows: int, last_id: int | None) -> CommitWriter:
        if not deeplake_compat.load().exists(self.path, **self._creds):
            if base is not None or base_rows:
                raise StoreDamaged("the catalog has chunks but there is no store")
            return self._empty()
        if base is None:
            # a store from before versions: its HEAD holds the chunks, never committed
            ds = self._load()
            if ds.commit_id is not None:
                raise StoreDamaged("the store has commits the catalog does not know")
            dataset.check_info(ds, self.embedder, self.dimension)
            dataset.check_whole(ds, base_rows, last_id)
            return CommitWriter(ds, base_rows)
        try:
            ds = self._load(reset=True)
            if ds.pending_commit_id == base:
                # the published version, still the HEAD: committed before anything is added
                if dataset.lengths(ds) != {base_rows}:
                    raise StoreDamaged(f"{dataset.lengths(ds)} rows, the catalog {base_rows}")
                ds.commit("upload", allow_empty=True)
            elif ds.has_head_changes:
                ds.reset()  # a write the catalog never published
        except StoreDamaged:
            raise
        except Exception as exc:
            raise StoreDamaged(f"the store cannot be loaded: {exc!r}") from exc
        if ds.commit_id != base:
            raise StoreDamaged(f"the published version {base} is not the store's last")
        dataset.check_info(ds, self.embedder, self.dimension)
        if dataset.lengths(ds) != {base_rows}:
            raise StoreDamaged(f"{dataset.lengths(ds)} rows, the catalog {base_rows}")
        return CommitWriter(ds, base_rows)

    def begin_empty(self) -> CommitWriter:
        return self._empty()

    def _empty(self) -> CommitWriter:
        ds = deeplake_compat.load().empty(
            self.path, overwrite=True, verbose=False, lock_enabled=False, **self._creds
        )
        dataset.create_tensors(ds, self.embedder, self.dimension)
        return CommitWriter(ds, 0)

    def published(self, version: str) -> None:
        return None

    def newest(self) -> str | None:
        if not deeplake_compat.load().exists(self.path, **self._creds):
            return None
        head: str = self._load(read_only=True).pending_commit_id
        return head
