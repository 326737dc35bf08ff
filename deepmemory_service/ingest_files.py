"""`deepmemory-service ingest PATH... --user UUID`: text and markdown files, with a progress bar."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from deepmemory_service import documents
from deepmemory_service.app import Parts, open_backend
from deepmemory_service.config import Settings
from deepmemory_service.payloads import DocumentIn

SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst", ".text"})


def files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
        else:
            yield path


async def run(settings: Settings, user_id: uuid.UUID, paths: Sequence[Path]) -> int:
    found = list(files(paths))
    missing = [p for p in found if not p.is_file()]
    if missing:
        print(f"deepmemory-service: not a file: {missing[0]}", file=sys.stderr)
        return 2
    if not found:
        print("deepmemory-service: no .txt or .md files found", file=sys.stderr)
        return 2
    async with open_backend(settings, Parts(), background=False) as backend:
        total = 0
        for path in tqdm(found, unit="file", desc="ingesting"):
            text = path.read_text(encoding="utf-8", errors="replace")
            if not text.strip():
                continue
            result = await documents.ingest(
                backend.svc, user_id, [DocumentIn(text=text, title=path.name)]
            )
            total = result.total_chunks
    print(f"ingested {len(found)} file(s); user {user_id} now has {total} chunks")
    return 0
