"""How the package is put together: folders by concept, each a layer that imports only the
layers below it, no import circles, and `db/database.py` the only module that talks to
PostgreSQL."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "deepmemory_service"
NAME = PACKAGE.name

# the modules directly in the package that every layer may use: the domain's words
VOCABULARY = frozenset({"models", "errors", "vectors"})
# the front door and the wiring: they may import anything, and nothing imports them
WIRING = frozenset({"__main__", "app", "cli", "demo", "ingest_files", "parts", "server"})
# what each folder may import besides itself and the vocabulary, lowest layer first
LAYERS: dict[str, frozenset[str]] = {
    "platform": frozenset(),
    "text": frozenset(),
    "db": frozenset({"platform"}),
    "storage": frozenset({"platform", "text", "db"}),
    "llm": frozenset({"platform", "text", "db"}),
    "training": frozenset({"platform", "text", "storage"}),
    "runs": frozenset({"platform", "text", "db", "storage", "llm", "training"}),
    "api": frozenset({"platform", "text", "db", "storage", "llm", "training", "runs"}),
    "gateway": frozenset({"platform", "api"}),
    # stand-ins and fakes for tests and benchmarks: any layer's parts, never the wiring
    "testing": frozenset(
        {"platform", "text", "db", "storage", "llm", "training", "runs", "api", "gateway"}
    ),
}
# at most this many modules directly in the package, `__init__` included
MOST_AT_TOP = 15


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of each module of the package that `path` imports, at any depth (a
    function's own import counts: it is a dependency all the same)."""
    package = _module(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == NAME:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            if base.split(".")[0] != NAME:
                continue
            for alias in node.names:
                whole = f"{base}.{alias.name}"
                found = _file(whole)
                yield node.lineno, whole if found is not None and found.exists() else base


def _file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    if not parts:
        return PACKAGE / "__init__.py"
    as_module = PACKAGE.joinpath(*parts).with_suffix(".py")
    if as_module.exists():
        return as_module
    as_package = PACKAGE.joinpath(*parts, "__init__.py")
    return as_package if as_package.exists() else None


def _room(module: str) -> str:
    """The folder of a module of the package, or its own name for one at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, list[tuple[int, str]]]:
    return {_module(p): list(_imports(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def test_db_is_the_only_asyncpg_user() -> None:
    users = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() == "db/database.py":
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
            # Conn.raw is the database module's asyncpg connection: used elsewhere, asyncpg
            # is used directly
            if isinstance(node, ast.Attribute) and node.attr == "raw":
                users.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses .raw")
    assert users == []


def layering_problems(graph: dict[str, list[tuple[int, str]]]) -> list[str]:
    """Each import that goes against the table: a layer importing one above it (or beside
    it), the vocabulary importing a layer, anything importing the wiring."""
    problems = []
    for module, imported in graph.items():
        room = _room(module)
        top_level = len(module.split(".")) == 2 and room not in LAYERS
        name = module.split(".")[-1]
        for line, target in imported:
            to = _room(target)
            to_name = target.split(".")[1] if len(target.split(".")) > 1 else "__init__"
            if to == room and not top_level:
                continue
            where = f"{module}:{line} imports {target}"
            if to_name in WIRING or (to == "__init__" and to_name == "__init__"):
                if name not in WIRING and not (to == "__init__" and target == NAME):
                    problems.append(f"{where}: the wiring is imported by nothing")
                continue
            if to_name in VOCABULARY and to not in LAYERS:
                continue
            if top_level and name in WIRING:
                continue
            if top_level:
                problems.append(f"{where}: the vocabulary imports no layer")
            elif room in LAYERS and to not in LAYERS[room]:
                problems.append(f"{where}: {room}/ may not import {to}/")
    return problems


def circles(graph: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """The import circles between the package's modules (strongly connected components of
    more than one module, or a module importing itself)."""
    edges = {m: sorted({t for _, t in imported if t in graph}) for m, imported in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_every_layer_imports_only_the_layers_below_it() -> None:
    assert layering_problems(_graph()) == []


def test_no_import_circles() -> None:
    assert circles(_graph()) == []


def test_every_folder_is_in_the_table_and_few_modules_sit_at_the_top() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(LAYERS)
    at_top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert set(at_top) <= VOCABULARY | WIRING | {"__init__"}, at_top
    assert len(at_top) <= MOST_AT_TOP, at_top


@pytest.mark.parametrize(
    ("module", "added", "expected"),
    [
        ("storage.corpus", "runs.services", "storage/ may not import runs/"),
        ("db.database", "llm.budget_sharing", "db/ may not import llm/"),
        ("platform.config", "llm.usage", "platform/ may not import llm/"),
        ("models", "db.database", "the vocabulary imports no layer"),
        ("runs.commands", "app", "the wiring is imported by nothing"),
    ],
)
def test_the_table_refuses_a_forbidden_import(module: str, added: str, expected: str) -> None:
    graph = _graph()
    graph[f"{NAME}.{module}"].append((1, f"{NAME}.{added}"))
    assert any(expected in problem for problem in layering_problems(graph))


def test_a_circle_is_found() -> None:
    graph = _graph()
    graph[f"{NAME}.platform.retry"].append((1, f"{NAME}.platform.config"))
    graph[f"{NAME}.platform.config"].append((1, f"{NAME}.platform.retry"))
    assert [f"{NAME}.platform.config", f"{NAME}.platform.retry"] in circles(graph)


def test_the_actor_and_the_errors_need_no_web_or_database_stack() -> None:
    probe = (
        "import sys\n"
        f"import {NAME}.errors, {NAME}.runs.supervisor\n"
        "print(sorted(m for m in ('aiohttp', 'asyncpg', 'numpy', 'deeplake') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
