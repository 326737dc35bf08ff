"""`deepmemory-service ingest PATH... --user UUID`: text files as a user's documents, with a
progress bar while it works and a summary at the end (what was added, what was skipped and
why)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import attrs
from tqdm import tqdm

from deepmemory_service.app import Overrides, open_backend
from deepmemory_service.platform.config import Settings
from deepmemory_service.storage import documents
from deepmemory_service.storage.documents import DocumentText
from deepmemory_service.text import decoding
from deepmemory_service.text.chunking import TEXT_SUFFIXES as SUFFIXES

# names listed in a summary line before "and N more"
LISTED = 10


class NotFound(Exception):
    """A path named on the command line does not exist."""


@attrs.frozen
class Plan:
    files: list[Path]
    # files in the folders that are not of a text type: listed, not read
    unsupported: list[Path]


def plan(paths: Sequence[Path]) -> Plan:
    """The files to read: those named, and the text files in the folders named."""
    files: list[Path] = []
    unsupported: list[Path] = []
    for path in paths:
        if path.is_dir():
            for candidate in sorted(p for p in path.rglob("*") if p.is_file()):
                hidden = any(part.startswith(".") for part in candidate.relative_to(path).parts)
                if candidate.suffix.lower() in SUFFIXES:
                    files.append(candidate)
                elif not hidden:  # .git and the like are nobody's documents
                    unsupported.append(candidate)
        elif path.is_file():
            files.append(path)
        else:
            raise NotFound(f"no such file or folder: {path}")
    return Plan(files, unsupported)


@attrs.define
class Outcome:
    """What became of each file, for the summary."""

    added: list[Path] = attrs.Factory(list)
    chunks: int = 0
    unchanged: list[Path] = attrs.Factory(list)
    empty: list[Path] = attrs.Factory(list)
    unsupported: list[Path] = attrs.Factory(list)
    unreadable: list[tuple[Path, str]] = attrs.Factory(list)
    # files added from another encoding than UTF-8, and which
    legacy: list[tuple[Path, str]] = attrs.Factory(list)
    total_chunks: int = 0


def read_text(path: Path) -> decoding.Decoded:
    """The file as text, decoded as the service decodes a file sent from the page
    (`text.decoding`), or ValueError (`NotText`) saying why it is not text."""
    return decoding.decode(path.read_bytes())


def names(paths: Sequence[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:LISTED])
    more = len(paths) - LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def summary(outcome: Outcome, user_id: uuid.UUID) -> list[str]:
    lines = [
        f"added {len(outcome.added)} file(s), {outcome.chunks} chunks; user {user_id} now "
        f"has {outcome.total_chunks} chunks"
    ]
    if outcome.unchanged:
        lines.append(
            f"skipped {len(outcome.unchanged)} unchanged file(s), already added with the same "
            f"name and text (--force adds them again): {names(outcome.unchanged)}"
        )
    if outcome.empty:
        lines.append(f"skipped {len(outcome.empty)} empty file(s): {names(outcome.empty)}")
    if outcome.unsupported:
        accepted = " ".join(sorted(SUFFIXES))
        lines.append(
            f"skipped {len(outcome.unsupported)} file(s) of other types in the folders "
            f"(accepted: {accepted}; name a file to read it anyway): "
            f"{names(outcome.unsupported)}"
        )
    if outcome.legacy:
        read = ", ".join(f"{path} ({encoding})" for path, encoding in outcome.legacy[:LISTED])
        more = len(outcome.legacy) - LISTED
        lines.append(
            f"read {len(outcome.legacy)} file(s) that are not UTF-8 in the encoding that "
            f"reads them as text: {read}{f' and {more} more' if more > 0 else ''}"
        )
    for path, why in outcome.unreadable:
        lines.append(f"could not add {path}: {why}")
    return lines


async def ingest(settings: Settings, user_id: uuid.UUID, files: Plan, *, force: bool) -> Outcome:
    outcome = Outcome(unsupported=list(files.unsupported))
    async with open_backend(settings, Overrides(), background=False) as backend:
        async with backend.svc.db.conn() as conn:
            outcome.total_chunks = await conn.total_chunks(user_id)
        # the bar goes to stderr and only on a terminal (in a pipe it is noise); the summary
        # that follows is the record
        for path in tqdm(files.files, unit="file", desc="ingesting", disable=None):
            try:
                decoded = read_text(path)
            except (OSError, ValueError) as exc:
                outcome.unreadable.append((path, str(exc)))
                continue
            text = decoded.text
            if not text.strip():
                outcome.empty.append(path)
                continue
            result = await documents.ingest(
                backend.svc.corpora,
                user_id,
                [DocumentText(text, path.name)],
                skip_unchanged=not force,
            )
            outcome.total_chunks = result.total_chunks
            if result.skipped:
                outcome.unchanged.append(path)
            else:
                outcome.added.append(path)
                outcome.chunks += result.chunks
                if decoded.encoding not in ("utf-8", "ascii"):
                    outcome.legacy.append((path, decoded.encoding))
    return outcome


async def run(settings: Settings, user_id: uuid.UUID, files: Plan, *, force: bool = False) -> int:
    """The command: 0 when every file was added or skipped for a reason, 1 when some could
    not be read."""
    outcome = await ingest(settings, user_id, files, force=force)
    for line in summary(outcome, user_id):
        print(line)
    return 1 if outcome.unreadable else 0
