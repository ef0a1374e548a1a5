"""The core stays easy to change: no import cycle inside shared_core, and no host imported by it.

A cycle makes its modules one unit that must be read, changed and tested together, even when one side
imports the other only for type hints or inside a function; so every import counts here, wherever it
stands. The hosts (ComfyUI, AUTOMATIC1111/Forge, gradio) load shared_core, never the other way round:
gradio belongs to the standalone app in shared_core/ui/ only.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "shared_core"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
#: top-level modules of the hosts: ComfyUI's, A1111/Forge's (modules, launch), this repository's host faces, and gradio
HOSTS = {"comfy", "comfy_api", "folder_paths", "execution", "server", "nodes", "modules", "launch", "a1111_extension", "gradio"}
#: the standalone web app is the one place gradio is imported
GRADIO_HOME = f"{PACKAGE}.ui"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, name: str, modules: set[str] = frozenset()) -> list[str]:
    """Every module that module `name` (at `path`) imports, absolute, from anywhere in it: functions and
    `if TYPE_CHECKING:` included.

    `from X import y` imports module X.y when `modules` has one of that name, else X. A package is not counted
    as imported by its own submodules, though Python runs it first: an `__init__` that gathers its submodules'
    names is no circle.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            names += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    return names


def import_graph() -> dict[str, set[str]]:
    """shared_core module -> the shared_core modules it imports."""
    paths = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}
    modules = set(paths)
    return {name: {target for target in imported_names(path, name, modules) if target in modules and target != name}
            for name, path in paths.items()}  # fmt: skip


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_shared_core_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "modules that import each other, directly or around a circle:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_core_never_imports_hosts_and_gradio_only_in_ui():
    offences = []
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        for target in imported_names(path, name):
            top = target.split(".")[0]
            if top in HOSTS and not (top == "gradio" and (name == GRADIO_HOME or name.startswith(f"{GRADIO_HOME}."))):
                offences.append(f"{name} imports {target}")
    assert not offences, "\n".join(sorted(set(offences)))


def test_the_checks_see_every_kind_of_import(tmp_path):
    """Relative imports resolve, and those in functions and under TYPE_CHECKING count; a circle of three is found."""
    source = tmp_path / "engine.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import tiles\n"
        "if TYPE_CHECKING:\n"
        "    from .objectives import Objective\n"
        "def run():\n"
        "    from ..surrogates import loading\n"
        "    import comfy.model_management\n"
    )
    names = imported_names(source, "pkg.protect.engine", {"pkg.protect.tiles", "pkg.surrogates.loading"})
    assert set(names) == {"typing", "pkg.protect.tiles", "pkg.protect.objectives", "pkg.surrogates.loading",
                          "comfy.model_management"}  # fmt: skip
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
