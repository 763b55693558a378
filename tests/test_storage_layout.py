"""The shape of provisioner/storage: rooms that import downwards only, small files, short notes.

docs/data-layer.md tells the long story; these checks keep the layout it describes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import provisioner

PACKAGE = Path(provisioner.__file__).resolve().parent
STORAGE = PACKAGE / "storage"
MAX_LINES = 800
MAX_DOCSTRING_LINES = 15


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The provisioner modules `path` imports when it is imported (not inside functions, not
    for type checking only)."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m in modules and m != me}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _top_level_imports(path, modules) for name, path in modules.items()}
    # Importing a module imports its packages first: `a.b.c` depends on `a.b` and `a`.
    for name in graph:
        parts = name.split(".")
        parents = {".".join(parts[:i]) for i in range(1, len(parts))}
        graph[name] |= {p for p in parents if p in graph}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            # A package importing its own submodules is how packages work, not a cycle.
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_provisioner_module_imports_itself_round_a_cycle() -> None:
    assert _cycle(_graph()) is None


def test_storage_imports_neither_the_engine_nor_the_cli() -> None:
    modules = _modules()
    wrong = {
        f"{_module_name(path)} -> {imported}"
        for path in STORAGE.rglob("*.py")
        for imported in _top_level_imports(path, modules) | _lazy_imports(path)
        if imported.startswith(("provisioner.engine", "provisioner.cli"))
    }
    assert not wrong


def _lazy_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}


def test_the_rooms_import_downwards_only() -> None:
    """phpjson knows nothing of AEIMS; aeims and pg know nothing of the layer."""
    below = {
        "phpjson": ("aeims", "pg", "layer"),
        "aeims": ("pg", "layer"),
        "pg": ("aeims", "phpjson", "layer"),
    }
    wrong = []
    for room, forbidden in below.items():
        for path in (STORAGE / room).rglob("*.py"):
            for imported in _lazy_imports(path):
                if imported.startswith(tuple(f"provisioner.storage.{f}" for f in forbidden)):
                    wrong.append(f"{_module_name(path)} -> {imported}")
    assert not wrong


def test_no_storage_file_is_over_800_lines() -> None:
    long = {
        str(p.relative_to(STORAGE)): n
        for p in STORAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long


def test_storage_module_docstrings_are_short_and_present() -> None:
    """The why of each module in a few lines; the long story is in docs/data-layer.md."""
    wrong = {}
    for path in STORAGE.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
        lines = len(doc.strip().splitlines()) if doc else 0
        if not 0 < lines <= MAX_DOCSTRING_LINES:
            wrong[str(path.relative_to(STORAGE))] = lines
    assert not wrong


def test_the_schema_files_are_where_the_runner_looks() -> None:
    from provisioner.storage.pg.schema_versions import SCHEMA_DIR, discover

    assert SCHEMA_DIR == STORAGE / "pg" / "schema"
    assert [m.name for m in discover()][-1] == "0004_drop_dead_tables"


def test_underscored_names_stay_inside_their_room() -> None:
    """Modules of one room share its underscored helpers; no other module imports them."""
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        me = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module):
                continue
            if not node.module.startswith("provisioner.storage."):
                continue
            room = ".".join(node.module.split(".")[:3])
            private = [a.name for a in node.names if a.name.startswith("_")]
            if private and not me.startswith(room + "."):
                wrong.append(f"{me} <- {node.module}: {', '.join(private)}")
    assert not wrong
