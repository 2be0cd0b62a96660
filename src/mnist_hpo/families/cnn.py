"""cnn: the course report's SimpleCNN shape, conv blocks with max-pool then a dense stack (part 4).

Each block is Conv -> MaxPool -> [BatchNorm] -> ReLU. The report ordered ReLU before the pool;
max-pool commutes with ReLU (both monotone), so without batch norm this is the same function,
and pooling first runs the ReLU on a quarter of the activations.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mnist_hpo.space import Hyper

SUMMARY = "conv blocks (1-3) with max-pool, then 0-2 dense layers; samples channels, kernel, widths"


@dataclass(frozen=True)
class Config:
    channels: tuple[int, ...]  # output channels of each conv block; each block halves H and W
    kernel_size: int  # odd, 'same' padding
    fc_widths: tuple[int, ...]  # hidden dense layers after the conv stack
    dropout: float  # before every dense layer (0 = none)
    batch_norm: bool  # BatchNorm2d after each pool


def sample(hp: Hyper) -> Config:
    # 28 -> 14 -> 7 -> 3: a fourth pool would leave 1x1 maps, so at most 3 blocks.
    n_blocks = hp.int("n_blocks", 1, 3, limits=(1, 3))
    channels = tuple(
        hp.int(f"channels_{i}", 8, 128, log=True, limits=(1, 512)) for i in range(n_blocks)
    )
    kernel_size = hp.choice("kernel_size", (3, 5), allowed=(3, 5, 7))
    n_fc = hp.int("n_fc", 1, 2, limits=(0, 4))
    fc_widths = tuple(
        hp.int(f"fc_width_{i}", 32, 512, log=True, limits=(1, 8192)) for i in range(n_fc)
    )
    return Config(
        channels=channels,
        kernel_size=kernel_size,
        fc_widths=fc_widths,
        dropout=hp.float("dropout", 0.0, 0.5, limits=(0.0, 0.9)),
        batch_norm=hp.choice("batch_norm", (False, True)),
    )


def build(cfg: Config) -> nn.Module:
    layers: list[nn.Module] = []
    c_in, side = 1, 28
    for c_out in cfg.channels:
        layers += [
            nn.Conv2d(c_in, c_out, cfg.kernel_size, padding=cfg.kernel_size // 2),
            nn.MaxPool2d(2),
        ]
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU())
        c_in, side = c_out, side // 2
    layers.append(nn.Flatten())
    fan_in = c_in * side * side
    for width in cfg.fc_widths:
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    if cfg.dropout > 0:
        layers.append(nn.Dropout(cfg.dropout))
    layers.append(nn.Linear(fan_in, 10))
    return nn.Sequential(*layers)
