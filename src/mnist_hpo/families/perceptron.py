"""perceptron: a single linear layer, 784 -> 10 (course report, part 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnist_hpo.ml.space import Hyper

if TYPE_CHECKING:
    from torch import nn

SUMMARY = "linear 784->10; only the training hyperparameters are searched"


@dataclass(frozen=True)
class Config:
    """Nothing to sample: the architecture is fixed."""


def sample(hp: Hyper) -> Config:
    return Config()


def build(cfg: Config) -> nn.Module:
    from torch import nn  # imported here: see families/__init__.py

    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
