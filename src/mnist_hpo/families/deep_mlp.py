"""deep_mlp: the course report's DeepNetwork, two or more hidden ReLU layers (part 3).

Optional batch norm between each hidden layer and its ReLU (off by default, as in the report).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnist_hpo.ml.space import Hyper

if TYPE_CHECKING:
    from torch import nn

SUMMARY = "784->w0->...->10 with ReLU; samples depth (2-4), each width, dropout and batch norm"


@dataclass(frozen=True)
class Config:
    widths: tuple[int, ...]  # hidden layer widths, input side first
    dropout: float  # dropout after every hidden activation (0 = none)
    batch_norm: bool = False  # BatchNorm1d between every hidden layer and its ReLU


def sample(hp: Hyper) -> Config:
    # The report tried 2 and 3 layers; 4 lets the search say whether depth still pays.
    n_layers = hp.int("n_layers", 2, 4, limits=(2, 8))
    widths = tuple(
        hp.int(f"width_{i}", 32, 1024, log=True, limits=(1, 8192)) for i in range(n_layers)
    )
    return Config(
        widths=widths,
        dropout=hp.float("dropout", 0.0, 0.5, limits=(0.0, 0.9)),
        batch_norm=hp.choice("batch_norm", (False,), allowed=(False, True)),
    )


def build(cfg: Config) -> nn.Module:
    from torch import nn  # imported here: see families/__init__.py

    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = 28 * 28
    for width in cfg.widths:
        layers.append(nn.Linear(fan_in, width))
        if cfg.batch_norm:  # only when asked for: keeps the report-era layer indices otherwise
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        fan_in = width
    layers.append(nn.Linear(fan_in, 10))
    return nn.Sequential(*layers)
