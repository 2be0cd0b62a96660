"""simple_mlp: one hidden layer, Linear -> ReLU -> Linear (course report, part 2).

The report's SimpleMLP.forward applied ReLU to the *input* and none after the hidden layer, so
its network was linear end to end and topped out at 86-91%. This is the intended network, with
optional batch norm between the hidden layer and its ReLU (off by default, as in the report).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnist_hpo.ml.space import Hyper

if TYPE_CHECKING:
    from torch import nn

SUMMARY = "784->hidden->10 with ReLU; samples hidden width, dropout and batch norm"


@dataclass(frozen=True)
class Config:
    hidden: int  # width of the hidden layer
    dropout: float  # dropout after the hidden activation (0 = none)
    batch_norm: bool = False  # BatchNorm1d between the hidden layer and its ReLU


def sample(hp: Hyper) -> Config:
    return Config(
        hidden=hp.int("hidden", 32, 1024, log=True, limits=(1, 8192)),
        dropout=hp.float("dropout", 0.0, 0.5, limits=(0.0, 0.9)),
        batch_norm=hp.choice("batch_norm", (False,), allowed=(False, True)),
    )


def build(cfg: Config) -> nn.Module:
    from torch import nn  # imported here: see families/__init__.py

    # Batch norm only when asked for: without it the layers (and so the state_dict keys of
    # models exported before it existed) are exactly the report-era network's.
    norm: list[nn.Module] = [nn.BatchNorm1d(cfg.hidden)] if cfg.batch_norm else []
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, cfg.hidden),
        *norm,
        nn.ReLU(),
        nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity(),
        nn.Linear(cfg.hidden, 10),
    )
