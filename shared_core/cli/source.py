"""Constants read from the core's source with `ast`: listing them does not wait seconds for torch to import."""

from __future__ import annotations

import ast
from pathlib import Path


def source_tree(module: str) -> ast.Module:
    """The parsed source of a shared_core module, named relative to shared_core (e.g. "protect.timesteps")."""
    return ast.parse((Path(__file__).parents[1] / Path(*module.split("."))).with_suffix(".py").read_text(encoding="utf-8"))


def assigned_value(tree: ast.Module, name: str) -> ast.expr:
    """The value of the module-level assignment `name = ...` (annotated or not)."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node.value
    raise LookupError(name)


def dict_keys(module: str, name: str) -> list[str]:
    return [ast.literal_eval(key) for key in assigned_value(source_tree(module), name).keys]
