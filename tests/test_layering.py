"""The import graph keeps the layout's rules, by folder (read from the code's own import lines).

Packages, bottom up: the base modules (errors, events, settings), ml/ (the trainer and its data:
no Optuna, no SQL), families/, resilience/ (the wall: the only place for SQL, locks and Optuna's
internals), search/, then fleet/ and outputs/ side by side, view/ (the view of a running search),
api/ (the Python API), then cli/. A module may import its
own package and anything below it, never a package above or beside it; a new module is ruled
the moment it lands in a folder, so there is no list to keep by hand.
"""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

from conftest import ROOT

SRC = ROOT / "src" / "mnist_hpo"
PRIVATE_OPTUNA = re.compile(r"^optuna(\.\w+)*\._")
INTERNALS = "optuna_internals.py"  # resilience/: every private use of Optuna, and only there
BASE = {"errors", "events", "settings"}
# What each part may import of the project (besides itself): the layering, written once.
MAY_IMPORT: dict[str, set[str]] = {
    "base": {"base"},
    "ml": {"base"},
    "families": {"base", "ml"},
    "resilience": {"base"},
    "search": {"base", "ml", "families", "resilience"},
    "fleet": {"base", "ml", "families", "resilience", "search"},
    "outputs": {"base", "ml", "families", "resilience", "search"},
    "view": {"base", "search"},  # the view reads search/progress's Snapshot (for types only)
    "api": {"base", "ml", "families", "resilience", "search", "fleet", "outputs", "view"},
    "cli": {"base", "ml", "families", "resilience", "search", "fleet", "outputs", "view", "api"}
    | {"top"},
    # __init__ (the API's names, imported lazily) and __main__ (the CLI)
    "top": {"cli", "api", "base"},
}
# Third-party imports that belong to one part only. `signal`: the wall's Stop, and the fleet's
# process supervisors, which forward signals to the workers they start.
ONLY_IN = {"sqlalchemy": {"resilience"}, "signal": {"resilience", "fleet"}}
NO_OPTUNA = {"ml", "families"}


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
    if len(rel.parts) > 1:
        return rel.parts[0]
    return "base" if rel.stem in BASE else "top"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _project_parts(imports: set[str]) -> set[str]:
    """The parts of the project these imports reach (an imported name that is a module counts)."""
    parts = set()
    for name in imports:
        bits = name.split(".")
        if bits[0] != "mnist_hpo" or len(bits) == 1:
            continue
        if (SRC / bits[1]).is_dir():
            parts.add(bits[1])
        elif bits[1] in BASE:
            parts.add("base")
        elif bits[1] == "__main__":
            parts.add("top")
        # `from mnist_hpo import __version__`: the package metadata, not a module
    return parts


def _upward(part: str, imports: set[str]) -> set[str]:
    return _project_parts(imports) - MAY_IMPORT[part] - {part}


def _walled(part: str, imports: set[str]) -> list[str]:
    return sorted(
        name
        for name in imports
        if part not in ONLY_IN.get(name.split(".")[0], {part}) or PRIVATE_OPTUNA.match(name)
    )


def _private_attributes(path: Path) -> set[str]:
    """`x._storage`, `trial._trial_id` ...: Optuna objects' private attributes, read directly."""
    names = {"_storage", "_study_id", "_trial_id", "_backend", "_max_retry", "_cached_frozen_trial"}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in names}


IDS = {"ids": lambda p: str(p.relative_to(SRC))}


def test_every_folder_is_a_known_part() -> None:
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(MAY_IMPORT), f"{folders - set(MAY_IMPORT)}: add it to MAY_IMPORT"


@pytest.mark.parametrize("path", _modules(), **IDS)
def test_nothing_imports_a_part_above_or_beside_it(path: Path) -> None:
    part = _part(path)
    wrong = _upward(part, _imports(path))
    assert wrong == set(), f"{path.relative_to(SRC)} ({part}/) imports {sorted(wrong)}"


@pytest.mark.parametrize("path", _modules(), **IDS)
def test_sql_signals_and_optuna_internals_stay_behind_their_walls(path: Path) -> None:
    part = _part(path)
    banned = _walled(part, _imports(path))
    if path.name == INTERNALS:  # the one file allowed Optuna's private modules
        banned = [n for n in banned if not PRIVATE_OPTUNA.match(n)]
    assert banned == [], f"{path.name} imports {banned}: that belongs behind resilience/"
    if part != "resilience":
        assert _private_attributes(path) == set(), f"{path.name} reads Optuna's private attributes"


def test_optuna_internals_live_in_one_file() -> None:
    users = sorted(
        p.name
        for p in _modules()
        if any(PRIVATE_OPTUNA.match(n) for n in _imports(p)) or _private_attributes(p)
    )
    # optuna_internals.py reads two tables, and imports one private module to open a storage
    # for reading without alembic (without_alembic); nothing else may.
    assert users in ([], [INTERNALS]), users


@pytest.mark.parametrize("path", [p for p in _modules() if _part(p) in NO_OPTUNA], **IDS)
def test_the_ml_core_and_the_families_never_import_optuna_or_sql(path: Path) -> None:
    roots = {n.split(".")[0] for n in _imports(path)}
    assert not roots & {"optuna", "optuna_dashboard", "sqlalchemy"}, path.relative_to(SRC)


def test_the_rules_catch_a_breach(tmp_path: Path) -> None:
    """The checks above on import lines as a careless edit would write them."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import signal\nimport optuna.storages._rdb\n"
        "def f():\n"
        "    from mnist_hpo.search import study\n"
        "    from mnist_hpo.fleet.worker import x\n"
    )
    imports = _imports(probe)
    assert _upward("ml", imports) == {"search", "fleet"}
    assert _upward("outputs", imports) == {"fleet"}
    assert _upward("cli", imports) == set()
    assert _walled("search", imports) == ["optuna.storages._rdb", "signal"]
    assert _walled("fleet", imports) == ["optuna.storages._rdb"]


def test_the_module_graph_has_no_cycles() -> None:
    mods = {
        ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in _modules()
    }

    def known(name: str) -> str | None:
        bits = name.split(".")
        for i in range(len(bits), 0, -1):
            if ".".join(bits[:i]) in mods:
                return ".".join(bits[:i])
        return None

    deps = {
        m: {k for n in _imports(p) if (k := known(n)) not in (None, m)} for m, p in mods.items()
    }
    # The top package imports the API only for type checkers and by name on first use
    # (`mnist_hpo.create_study`), never while it is imported, so modules that read
    # `mnist_hpo.__version__` close no loop (test_api.py checks that `import mnist_hpo` alone
    # imports none of the package's modules).
    deps["mnist_hpo"] = set()
    list(graphlib.TopologicalSorter(deps).static_order())  # raises CycleError on a loop


def test_every_package_is_described_in_the_architecture_doc() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").exists())
    missing = [name for name in packages if f"{name}/" not in doc]
    assert missing == [], f"docs/architecture.md does not describe {missing}"
