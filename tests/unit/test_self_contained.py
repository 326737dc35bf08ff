"""The repository stands on its own: every file its documents link to is in it, and no
document, comment or script points at files it does not hold (the contract and the design
that the service was first written against live outside it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# what a checkout holds besides the repository's own files
NOT_OURS = {".git", ".venv", "var", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
TEXT = {".md", ".py", ".sh", ".toml", ".cfg", ".sql", ".html", ".js", ".css", ".txt", ""}
# names of the outside documents, spelled in pieces so that this file does not hold them
OUTSIDE = [
    "shared" + "/spec",
    "../" + "shared",
    "/work/" + "shared",
    "DESIGN" + ".md",
    "zip-" + "005",
]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def repository_files() -> list[Path]:
    files = []
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if parts[0] in NOT_OURS or any(
            p.endswith(".egg-info") or p == "__pycache__" for p in parts
        ):
            continue
        if path.is_file() and path.suffix in TEXT:
            files.append(path)
    return files


def test_no_file_points_outside_the_repository() -> None:
    found = []
    for path in repository_files():
        text = path.read_text(errors="replace")
        for name in OUTSIDE:
            for line_no, line in enumerate(text.splitlines(), 1):
                if name in line:
                    found.append(f"{path.relative_to(ROOT)}:{line_no}: {name}")
    assert found == []


def test_every_link_in_the_documents_is_to_a_file_of_the_repository() -> None:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    assert len(documents) > 1
    broken = []
    for doc in documents:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or a place in the same document
            if not (doc.parent / target.split("#")[0]).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []
