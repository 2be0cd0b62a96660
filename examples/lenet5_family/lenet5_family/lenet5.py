"""lenet5: LeNet-5 (LeCun, Bottou, Bengio and Haffner, 1998) as an mnist-hpo model family.

C1 (6 maps, 5x5) -> S2 (2x2 subsampling) -> C3 (16 maps, 5x5) -> S4 -> C5 (120 maps, 5x5,
a 1x1 output) -> F6 (84) -> 10 outputs, on the 28x28 digit padded to the paper's 32x32. What
mnist-hpo's built-in cnn cannot express: C3's partial connection table (each of its 16 maps
sees 3, 4 or all 6 of S2's maps, the paper's Table I, to break symmetry and save weights), the
scaled tanh 1.7159 tanh(2x/3) and a convolution (C5) without pooling. Two simplifications:
S2 and S4 are plain average (or max) pools without the paper's trainable coefficient, and the
output layer is linear (logits for cross-entropy), not the paper's Euclidean RBF units.

The mnist-hpo family contract: SUMMARY, a frozen Config, sample(hp) -> Config asking every
parameter through hp, build(Config) -> nn.Module mapping (N, 1, 28, 28) to (N, 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # only for the annotation: the plugin needs nothing of mnist-hpo to import
    from mnist_hpo.ml.space import Hyper

SUMMARY = "LeNet-5 (1998): partial C3 connections or full, scaled tanh or ReLU, avg or max pool"

# Table I of the paper: the S2 maps each C3 map reads (60 of the 96 possible connections).
LECUN_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip
TABLES = ("lecun", "full")
ACTIVATIONS = ("tanh", "relu")
POOLS = ("avg", "max")


@dataclass(frozen=True)
class Config:
    c3_table: str  # one of TABLES: the paper's partial connections, or every S2 map
    activation: str  # one of ACTIVATIONS: "tanh" is the paper's scaled 1.7159 tanh(2x/3)
    pool: str  # one of POOLS: S2 and S4, 2x2 with stride 2
    f6: int  # width of F6 (the paper: 84, sized for its 7x12 bitmap targets)
    dropout: float  # before F6 and before the output layer (0 = none, as in the paper)


def sample(hp: Hyper) -> Config:
    return Config(
        c3_table=hp.choice("c3_table", TABLES),
        activation=hp.choice("activation", ACTIVATIONS),
        pool=hp.choice("pool", ("avg",), allowed=POOLS),
        f6=hp.int("f6", 84, 84, limits=(16, 512)),
        dropout=hp.float("dropout", 0.0, 0.3, limits=(0.0, 0.8)),
    )


class ScaledTanh(nn.Module):
    """The paper's squashing function, 1.7159 tanh(2x/3): gain about 1 around 0, f(1) = 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class PartialConv2d(nn.Conv2d):
    """A convolution in which output map j reads only the input maps table[j]: the weights of
    the other connections are held at zero by a fixed mask (a buffer, saved with the model)."""

    def __init__(self, table: tuple[tuple[int, ...], ...], c_in: int, k: int) -> None:
        super().__init__(c_in, len(table), k)
        mask = torch.zeros_like(self.weight)
        for j, maps in enumerate(table):
            mask[j, list(maps)] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias)


def build(cfg: Config) -> nn.Module:
    if cfg.c3_table not in TABLES or cfg.activation not in ACTIVATIONS or cfg.pool not in POOLS:
        raise ValueError(f"c3_table, activation or pool is not one this family knows: {cfg}")

    def act() -> nn.Module:
        return ScaledTanh() if cfg.activation == "tanh" else nn.ReLU()

    def pool() -> nn.Module:
        return nn.AvgPool2d(2) if cfg.pool == "avg" else nn.MaxPool2d(2)

    c3 = PartialConv2d(LECUN_TABLE, 6, 5) if cfg.c3_table == "lecun" else nn.Conv2d(6, 16, 5)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),  # C1: the 28x28 digit padded to the paper's 32x32
        act(), pool(),  # S2: 14x14
        c3, act(), pool(),  # C3: 10x10, S4: 5x5
        nn.Conv2d(16, 120, 5), act(),  # C5: 1x1
        nn.Flatten(),
        nn.Dropout(cfg.dropout), nn.Linear(120, cfg.f6), act(),  # F6
        nn.Dropout(cfg.dropout), nn.Linear(cfg.f6, 10),
    )  # fmt: skip
