"""simple_mlp: one hidden layer, Linear -> ReLU -> Linear (course report, part 2).

The report's SimpleMLP.forward applied ReLU to the *input* and none after the hidden layer, so
its network was linear end to end and topped out at 86-91%. This is the intended network.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mnist_hpo.space import Hyper

SUMMARY = "784->hidden->10 with ReLU; samples hidden width and dropout"


@dataclass(frozen=True)
class Config:
    hidden: int  # width of the hidden layer
    dropout: float  # dropout after the hidden activation (0 = none)


def sample(hp: Hyper) -> Config:
    return Config(
        hidden=hp.int("hidden", 32, 1024, log=True, limits=(1, 8192)),
        dropout=hp.float("dropout", 0.0, 0.5, limits=(0.0, 0.9)),
    )


def build(cfg: Config) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, cfg.hidden),
        nn.ReLU(),
        nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity(),
        nn.Linear(cfg.hidden, 10),
    )
