"""The model families: the four built-ins here, name -> Family; plugins from other packages
come in through families/registry.py (entry points, or a module path in a spec).

Each family module holds SUMMARY, a frozen `Config`, `sample(hp) -> Config` (its search space,
define-by-run, through `Hyper`) and `build(Config) -> nn.Module` (logits for 10 classes from
(N, 1, 28, 28) images): the contract, written down in docs/families.md and checked on a
plugin as it loads (families/contract.py). Structural integers (depth, blocks) must only *add*
parameters as they grow, so `space.explore` finds every parameter by probing the top of each
range. A new built-in is one module here plus one line below. A built-in family module imports
torch inside `build` only: checking and listing specs (`studies`, `status`) then runs without
torch, whose import is most of a second here and 4.5 s on a small VM.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mnist_hpo import __version__
from mnist_hpo.families import cnn, deep_mlp, perceptron, simple_mlp
from mnist_hpo.families.origin import BUILT_IN, Origin, of_module
from mnist_hpo.ml.space import Hyper

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Family:
    name: str  # what a spec's `family` says: a built-in's or plugin's name, or a module path
    summary: str
    sample: Callable[[Hyper], Any]  # returns the family's Config
    build: Callable[[Any], nn.Module]  # Config -> model
    config: type  # the family's Config class: what sample must return
    origin: Origin  # where its code comes from (recorded by a study)

    @staticmethod
    def of(module: ModuleType, name: str | None = None, origin: Origin | None = None) -> Family:
        return Family(
            name=name or module.__name__.rsplit(".", 1)[-1],
            summary=module.SUMMARY,
            sample=module.sample,
            build=module.build,
            config=module.Config,
            origin=origin or of_module(module, BUILT_IN, "mnist-hpo", __version__),
        )


FAMILIES: dict[str, Family] = {
    f.name: f for f in map(Family.of, (perceptron, simple_mlp, deep_mlp, cnn))
}


class _Package(ModuleType):
    """This package's module type: `mnist_hpo.families()` lists the families (the Python API's
    call, FamilyInfo records), though `mnist_hpo.families` is this package."""

    def __call__(self) -> list[Any]:
        import mnist_hpo

        return mnist_hpo._list_families()


sys.modules[__name__].__class__ = _Package
