"""The code stays small enough to hold in one's head, and service/ reaches the model through one door.

Limits a newcomer can rely on: no function over 80 lines, no class over 400, no file over 700 in model/
or service/; service/ imports at most three modules of model/ (model.api, its torch-free half model.lite,
and model.errors) and touches no private member of another object.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICE_MAY_IMPORT = {"model.api", "model.lite", "model.errors"}


def _sources(*packages: str) -> list[tuple[Path, ast.Module, int]]:
    out = []
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            text = path.read_text()
            out.append((path.relative_to(ROOT), ast.parse(text), text.count("\n")))
    return out


def test_functions_classes_and_files_stay_small() -> None:
    too_big = []
    for path, tree, lines in _sources("model", "service"):
        if lines > 700:
            too_big.append(f"{path}: {lines} lines")
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            size, limit = node.end_lineno - node.lineno + 1, 400 if isinstance(node, ast.ClassDef) else 80
            if size > limit:
                too_big.append(f"{path}: {node.name} {size} lines")
    assert not too_big, "split by job: " + "; ".join(too_big)


def test_service_uses_the_model_only_through_its_door() -> None:
    imported, private = set(), []
    for path, tree, _ in _sources("service"):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "model":
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.split(".")[0] == "model"}
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                  and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                private.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    assert imported <= SERVICE_MAY_IMPORT, f"service/ imports {sorted(imported - SERVICE_MAY_IMPORT)}"
    assert not private, "private members of other objects: " + "; ".join(private)
