"""The model families: name -> Family. A new family is one module here plus one line below.

Each family module holds SUMMARY, a frozen `Config`, `sample(hp) -> Config` (its search space,
define-by-run, through `Hyper`) and `build(Config) -> nn.Module` (logits for 10 classes from
(N, 1, 28, 28) images). Structural integers (depth, blocks) must only *add* parameters as they
grow, so `space.explore` finds every parameter by probing the top of each range. A family
module imports torch inside `build` only: checking and listing specs (`studies`, `status`)
then runs without torch, whose import is most of a second here and 4.5 s on a small VM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mnist_hpo.families import cnn, deep_mlp, perceptron, simple_mlp
from mnist_hpo.ml.space import Hyper

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    sample: Callable[[Hyper], Any]  # returns the family's Config
    build: Callable[[Any], nn.Module]  # Config -> model

    @staticmethod
    def of(module: ModuleType) -> Family:
        return Family(
            name=module.__name__.rsplit(".", 1)[-1],
            summary=module.SUMMARY,
            sample=module.sample,
            build=module.build,
        )


FAMILIES: dict[str, Family] = {
    f.name: f for f in map(Family.of, (perceptron, simple_mlp, deep_mlp, cnn))
}
