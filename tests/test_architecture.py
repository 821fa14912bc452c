"""The package's shape: no import circles, small packages and modules, SQL only in the store."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "audit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def exported_from(init: Path) -> dict[str, str]:
    """name -> defining module, for what a package's __init__ imports or lists in _LAZY."""
    table: dict[str, str] = {}
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("audit"):
            for alias in node.names:
                table[alias.asname or alias.name] = node.module
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_LAZY" for t in node.targets):
            for key, value in zip(node.value.keys, node.value.values):  # type: ignore[union-attr]
                table[key.value] = value.value  # type: ignore[union-attr]
    return table


def import_graph() -> dict[str, set[str]]:
    """module -> the modules it imports (anywhere in its body), package names resolved to the
    module that defines the imported name."""
    known = modules()
    inits = {name: exported_from(path) for name, path in known.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("audit"):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in known:
                        targets.append(f"{node.module}.{alias.name}")
                    elif node.module in inits and alias.name in inits[node.module] and path.name != "__init__.py":
                        targets.append(inits[node.module][alias.name])
                    else:
                        targets.append(node.module)
            elif isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names if alias.name.startswith("audit.")]
            graph[name].update(t for t in targets if t in known and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_module_imports_itself_through_others() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_circle_check_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_tree_shows_the_stages() -> None:
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 8, root_modules
    for package in [p for p in PACKAGE.rglob("*") if p.is_dir() and (p / "__init__.py").exists()]:
        count = len(list(package.glob("*.py")))
        assert count <= 12, f"{package} holds {count} modules"
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
        assert doc, f"{package}/__init__.py says no job"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_readable(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= 400, f"{path.relative_to(PACKAGE)} has {lines} lines"


def test_sql_lives_only_in_the_store() -> None:
    """Outside audit/store/, no module imports sqlite3 or runs a statement (.execute, .executemany,
    .executescript): every query is a store function or a RunStore method."""
    store = PACKAGE / "store"
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(store):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            imported = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name == "sqlite3" or name.startswith("sqlite3.") for name in imported):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports sqlite3")
            if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "executescript") \
                    and isinstance(getattr(node, "ctx", None), ast.Load):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} calls .{node.attr}(")
    assert offenders == []
