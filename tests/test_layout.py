"""The layout holds: arrows point down (the CLI and the DICOM edge use the library, never the
reverse) and no module imports itself round a circle. Read from the source, every import counted,
those inside functions and under TYPE_CHECKING too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dicom_chain", "scp", "web")
# What only the application may use: the command line's toolkit and the network edge.
APPLICATION_ONLY = ("click", "rich", "scp", "web", "dicom_chain.cli", "starlette", "uvicorn", "httpx")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:  # Alembic's scripts, loaded by path
                found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every module ``name`` imports, resolved: ``from a import b`` is ``a.b`` when that is a module."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield sub if sub in modules else target


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: set(_imports(name, path, modules)) for name, path in modules.items()}


def _is(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_library_never_imports_the_application():
    offenders = [
        f"{name} imports {target}"
        for name, targets in _graph().items()
        if _is(name, "dicom_chain") and not _is(name, "dicom_chain.cli")
        for target in targets
        if any(_is(target, banned) for banned in APPLICATION_ONLY)
    ]
    assert offenders == []


def test_the_dicom_edge_never_imports_the_command_line():
    offenders = [
        f"{name} imports {target}"
        for name, targets in _graph().items()
        if _is(name, "scp")
        for target in targets
        if _is(target, "dicom_chain.cli") or _is(target, "click")
    ]
    # nor drives it as a program: the forward process is scp's own (scp/forward_process.py)
    offenders += [
        f"{path.relative_to(ROOT)} runs the command line"
        for path in (ROOT / "scp").rglob("*.py")
        if "dicom_chain.cli" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_no_import_cycles():
    graph = {name: {t for t in targets if t in _modules()} for name, targets in _graph().items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target == module:
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_walk_sees_real_arrows():
    """The checks above would pass on an empty graph: make sure the walk finds known imports."""
    graph = _graph()
    assert "dicom_chain.block" in graph["dicom_chain.events"]
    assert any(_is(t, "pynetdicom") for t in graph["scp.server"])
    assert any(_is(t, "dicom_chain") for t in graph["scp.handlers"])
