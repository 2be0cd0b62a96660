"""Family names -> families: the built-ins, then installed plugins (entry points of the group
`mnist_hpo.families`), then a module path (family = "my_pkg.lenet5"); each with its origin.

A plugin package declares its family the way pytest plugins and most CLIs' extensions do:

    [project.entry-points."mnist_hpo.families"]
    lenet5 = "my_pkg.lenet5"

and `pip install` is all it takes. No code is ever fetched at run time (OptunaHub's
load_module caches downloads by branch name, so two workers can run different code): a family
is what is installed where it runs, a study records which code that was (origin.py), and every
worker compares (search/family_origin.py). A plugin is held to the contract as it loads.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.families import FAMILIES, Family
from mnist_hpo.families.contract import BrokenFamily, check, check_module, check_space, quote
from mnist_hpo.families.origin import MODULE, PLUGIN, of_module

GROUP = "mnist_hpo.families"  # the entry-point group a plugin package declares its family in


class UnknownFamily(UsageError):
    """No family by this name is installed here; `name` is what was asked for."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@functools.cache
def resolve(name: str) -> Family:
    """The family a spec's `family` names: a built-in, else an installed plugin, else a module
    path (a dotted name). UnknownFamily when none is found; BrokenFamily when the code is
    there but breaks the contract."""
    if name in FAMILIES:
        return FAMILIES[name]
    declared = _entry_points(name)
    if len(declared) > 1:
        raise UsageError(
            f"family {name!r} is declared by {len(declared)} installed plugins "
            f"({', '.join(map(_package, declared))}); uninstall all but one"
        )
    if declared:
        return _plugin(declared[0])
    if "." in name.strip("."):
        return _module_path(name)
    raise UnknownFamily(
        name,
        f"family {name!r} is not known; use a built-in ({', '.join(FAMILIES)}), an installed "
        f"plugin ({', '.join(plugin_names()) or 'none installed'}) or a module path such as "
        "my_pkg.lenet5 (`mnist-hpo families` lists them)",
    )


def refuse_shadowed(name: str) -> None:
    """A spec naming a built-in while an installed plugin declares that name too is refused:
    the built-in always wins, so the plugin would be ignored without a word."""
    clashing = _entry_points(name) if name in FAMILIES else []
    if clashing:
        raise UsageError(
            f"family {name!r} is a built-in, and the installed plugin {_package(clashing[0])} "
            f"declares the same name; built-ins cannot be replaced, so rename the plugin's entry "
            f"point (for example my_{name}) and name that in the spec"
        )


def plugin_names() -> list[str]:
    return sorted({ep.name for ep in _entry_points()} - set(FAMILIES))


@dataclass(frozen=True)
class Listed:
    """One family a spec can name, for `mnist-hpo families` (and the Python API)."""

    name: str
    origin: str  # where it comes from, in words
    family: Family | None  # None when it cannot be used
    problem: str = ""  # why it cannot ("" when it can)


def available() -> list[Listed]:
    """The built-ins, then every installed plugin, loaded and checked (a forward pass each):
    a broken or clashing plugin is listed with its problem, not raised."""
    listed = [Listed(f.name, f.origin.describe(), f) for f in FAMILIES.values()]
    for ep in sorted(_entry_points(), key=lambda e: (e.name, _package(e))):
        where = f"plugin {ep.value} (package {_package(ep)})"
        if ep.name in FAMILIES:
            why = f"refused: the built-in {ep.name} has this name; rename the entry point"
            listed.append(Listed(ep.name, where, None, why))
            continue
        try:
            family = resolve(ep.name)
            check(family)
        except HpoError as e:
            listed.append(Listed(ep.name, where, None, str(e)))
            continue
        listed.append(Listed(ep.name, family.origin.describe(), family))
    return listed


def _entry_points(name: str | None = None) -> list[metadata.EntryPoint]:
    found = metadata.entry_points(group=GROUP)
    return list(found if name is None else found.select(name=name))


def _package(ep: metadata.EntryPoint) -> str:
    return f"{ep.dist.name} {ep.dist.version}" if ep.dist else "an unknown package"


def _plugin(ep: metadata.EntryPoint) -> Family:
    where = f"plugin {ep.name} = {ep.value!r} (package {_package(ep)})"
    try:
        module = ep.load()
    except Exception as e:  # a plugin's import may raise anything: quote it
        raise BrokenFamily(f"{where} does not import ({quote(e)}); fix or reinstall it") from None
    if not isinstance(module, ModuleType):
        raise BrokenFamily(f'{where} must name a module ({ep.name} = "my_pkg.{ep.name}")')
    check_module(module, where)
    dist, version = (ep.dist.name, ep.dist.version) if ep.dist else ("", "")
    family = Family.of(module, ep.name, of_module(module, PLUGIN, dist, version))
    check_space(family)
    return family


def _module_path(name: str) -> Family:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(f"{e.name}.")):
            raise UnknownFamily(
                name,
                f"family {name!r} is neither a built-in ({', '.join(FAMILIES)}), an installed "
                f"plugin nor a module that imports ({quote(e)}); install the package that "
                "provides it, or put its folder on PYTHONPATH",
            ) from None
        raise BrokenFamily(
            f"module {name} does not import ({quote(e)}); install what it needs"
        ) from None
    except Exception as e:  # the module's own code may raise anything: quote it
        raise BrokenFamily(f"module {name} does not import ({quote(e)}); fix it") from None
    check_module(module, f"module {name}")
    dist, version = _distribution_of(name)
    family = Family.of(module, name, of_module(module, MODULE, dist, version))
    check_space(family)
    return family


def _distribution_of(module: str) -> tuple[str, str]:
    """The installed distribution (and its version) that provides a module, else ("", "")."""
    dists = metadata.packages_distributions().get(module.split(".")[0], [])
    if not dists:
        return "", ""
    return dists[0], metadata.version(dists[0])
