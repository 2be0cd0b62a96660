"""The import graph keeps the crash-safety wall: only resilience/ knows SQL, signals and Optuna's
internals, and the trainer never imports Optuna (read from the code's own import lines)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

SRC = ROOT / "src" / "mnist_hpo"
WALL = SRC / "resilience"
PRIVATE_OPTUNA = re.compile(r"^optuna(\.\w+)*\._")


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _private_attributes(path: Path) -> set[str]:
    """`x._storage`, `trial._trial_id` ...: Optuna objects' private attributes, read directly."""
    names = {"_storage", "_study_id", "_trial_id", "_backend", "_max_retry", "_cached_frozen_trial"}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in names}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_only_the_resilience_package_knows_sql_signals_and_optuna_internals(path: Path) -> None:
    if WALL in path.parents:
        return
    imports = _imports(path)
    banned = sorted(
        name
        for name in imports
        if name.split(".")[0] in ("sqlalchemy", "signal") or PRIVATE_OPTUNA.match(name)
    )
    assert banned == [], f"{path.name} imports {banned}: that belongs behind resilience/"
    assert _private_attributes(path) == set(), f"{path.name} reads Optuna's private attributes"


def test_optuna_internals_live_in_one_file() -> None:
    users = sorted(
        p.name
        for p in _modules()
        if any(PRIVATE_OPTUNA.match(n) for n in _imports(p)) or _private_attributes(p)
    )
    assert users == [], users  # optuna_internals.py itself reads tables, not private modules


@pytest.mark.parametrize(
    "module",
    [
        "train.py",
        "data.py",
        "datasets.py",
        "space.py",
        "hyperparams.py",
        "build.py",
        "spec.py",
        "algorithms.py",
        "model_file.py",
        "predict.py",
    ],
)
def test_the_ml_core_never_imports_optuna(module: str) -> None:
    assert not any(n.split(".")[0] == "optuna" for n in _imports(SRC / module)), module


def test_families_never_import_optuna() -> None:
    for path in (SRC / "families").glob("*.py"):
        assert not any(n.split(".")[0] == "optuna" for n in _imports(path)), path.name
