"""How the package is put together: `db.py` is the only module that talks to PostgreSQL."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deepmemory_service"


def test_db_is_the_only_asyncpg_user() -> None:
    users = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "db.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            imported = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name.split(".")[0] == "asyncpg" for name in imported):
                users.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports asyncpg")
            # Conn.raw is db.py's asyncpg connection: used elsewhere, asyncpg is used directly
            if isinstance(node, ast.Attribute) and node.attr == "raw":
                users.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses .raw")
    assert users == []
