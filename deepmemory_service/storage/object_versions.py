"""An s3:// store's versions: deeplake commits, each on a branch of its own, in generations.

A store at `s3://bucket/prefix/<user>` holds generations, each a dataset of its own under
`<store>/g<number>-<random>/`. A version is `<generation>@<commit id>`: the catalog
publishes that name, and readers on any instance load the dataset at that commit, whose
data no later write changes.

A write builds on the published commit on a new branch (`w-<random>`) and commits there
(`finish`); only then may the catalog publish it. So no two writers ever share a commit:
on a branch's HEAD every process that loaded it gets the same pending commit id, and a
writer that lost its lock (a stale one) committing late would write its rows under an id
another had published. A write the catalog never publishes leaves a branch nobody reads,
removed with its generation. Nothing is ever reset or overwritten: deeplake's reset after a
passing network failure drops published rows.

deeplake reads a commit by walking its chain of parents per chunk, so each upload in a
generation makes every later read of it slower (measured on a local S3: 22 requests to read
a version of 1 commit, 167 of 10, 549 of 30). Once the published version's chain is
`COMPACT_AFTER` commits long, the next write starts a new generation: the published version
copied whole (ids, texts, vectors, metadata), then the upload, in one commit. The
generation's first commit has the same id in every dataset, which is why a version names
its generation too.

`published` deletes the generations older than the one before the published version's (a
reader still on that one reads on; one further back is gone from the catalog for a whole
upload's time), and tells `newest` (for a store without a catalog) which version is newest.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import attrs
import numpy as np
import structlog

from deepmemory_service.storage import dataset
from deepmemory_service.storage.dataset import DatasetWriter, Rows, StoreDamaged, StoreError
from deepmemory_service.storage.object_store import PROBE, ObjectStore

log = structlog.get_logger(__name__)

COMPACT_AFTER = 16
# rows copied at a time into a new generation
COPY_PAGE = 4096
NEWEST = PROBE
_VERSION = re.compile(r"^(g(\d{8})-[0-9a-f]{6})@([0-9a-z]{40})$")
_GENERATION = re.compile(r"^g(\d{8})-[0-9a-f]{6}$")


def _parse(version: str) -> tuple[str, str]:
    found = _VERSION.match(version)
    if found is None:
        raise StoreDamaged(f"{version!r} is not a version of an s3:// store")
    return found.group(1), found.group(3)


def _number(generation: str) -> int:
    found = _GENERATION.match(generation)
    return int(found.group(1)) if found else -1


def _chain(ds: Any, commit: str) -> int:
    """How many commits deeplake walks to read `commit`."""
    node = ds.version_state["commit_node_map"][commit]
    length = 0
    while node is not None:
        length += 1
        node = node.parent
    return length


@attrs.define
class BranchWriter(DatasetWriter):
    generation: str

    def finish(self) -> str:
        self.flush()
        commit: str = self.ds.commit("upload")
        # the commit's own writes (its node in version_control_info.json) are in the bucket
        # before the catalog may name it
        self.ds.base_storage.flush()
        return f"{self.generation}@{commit}"

    def abandon(self) -> None:
        return None  # a branch (or a generation) nobody reads; deleted with its generation


@attrs.define
class ObjectVersions:
    path: str
    store: ObjectStore
    embedder: str
    dimension: int

    def _root(self, generation: str) -> str:
        return f"{self.path}/{generation}"

    def open(self, version: str) -> Any:
        generation, commit = _parse(version)
        return self.store.dataset(self._root(generation), read_only=True, address=commit)

    def begin(self, base: str | None, base_rows: int, last_id: int | None) -> BranchWriter:
        if base is None:
            if base_rows:
                raise StoreDamaged(f"the catalog has {base_rows} chunks but names no version")
            return self._generation(None)
        generation, commit = _parse(base)
        ds = self.store.dataset(self._root(generation), read_only=False, address=commit)
        dataset.check_info(ds, self.embedder, self.dimension)
        if dataset.lengths(ds) != {base_rows}:
            raise StoreDamaged(f"{dataset.lengths(ds)} rows, the catalog {base_rows}")
        if _chain(ds, commit) >= COMPACT_AFTER:
            return self._compacted(ds, generation, base_rows)
        ds.checkout(f"w-{secrets.token_hex(8)}", create=True)
        ds.base_storage.absent_under(f"versions/{ds.pending_commit_id}/")
        return BranchWriter(ds, base_rows, generation)

    def begin_empty(self) -> BranchWriter:
        return self._generation(None)

    def _generation(self, after: str | None) -> BranchWriter:
        """A writer of a new generation, numbered after every generation there is."""
        numbers = [_number(name) for name in self.store.folders(self.path)]
        number = max([*numbers, _number(after) if after else 0, 0]) + 1
        generation = f"g{number:08d}-{secrets.token_hex(3)}"
        ds = self.store.new_dataset(self._root(generation))
        dataset.create_tensors(ds, self.embedder, self.dimension)
        return BranchWriter(ds, 0, generation)

    def _compacted(self, old: Any, generation: str, rows: int) -> BranchWriter:
        """A new generation holding the published version `old` whole."""
        writer = self._generation(generation)
        for start in range(0, rows, COPY_PAGE):
            part = old[start : min(start + COPY_PAGE, rows)]
            writer.append(
                Rows(
                    np.asarray(part.id.numpy(aslist=True, fetch_chunks=True), dtype=object)
                    .reshape(-1)
                    .astype(np.int64)
                    .tolist(),
                    [str(t) for t in part.text.data()["value"]],
                    part.embedding.numpy(fetch_chunks=True).astype(np.float32, copy=False),
                    list(part.metadata.data()["value"]),
                )
            )
        log.info(
            "vector store compacted into a new generation",
            rows=rows,
            generation=writer.generation,
            after=generation,
        )
        return writer

    def published(self, version: str) -> None:
        """Generations no reader can be on are deleted; `newest` learns the version. The
        catalog is the truth: what fails here is done by the next publish."""
        generation, _ = _parse(version)
        keep_from = _number(generation) - 1
        try:
            for name in self.store.folders(self.path):
                number = _number(name)
                if 0 <= number < keep_from:
                    removed = self.store.delete_under(self._root(name))
                    log.info("old vector store generation deleted", objects=removed)
            self.store.write(f"{self.path}/{NEWEST}", json.dumps({"version": version}).encode())
        except StoreError as exc:
            log.warning("vector store not tidied", reason=exc.detail)

    def newest(self) -> str | None:
        found = self.store.read(f"{self.path}/{NEWEST}")
        if found is None:
            return None
        version: str = json.loads(found[1])["version"]
        return version
