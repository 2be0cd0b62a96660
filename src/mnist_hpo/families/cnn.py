"""cnn: the course report's SimpleCNN shape, conv blocks with pooling then a dense stack (part 4).

Each block is [Conv -> [BatchNorm] -> ReLU] x (convs_per_block - 1), then Conv -> Pool ->
[BatchNorm] -> ReLU. The report ordered ReLU before the pool; max-pool commutes with ReLU (both
monotone), so without batch norm this is the same function, and pooling first runs the ReLU on a
quarter of the activations. The head flattens the last maps (the report) or averages each
channel over the map first ("gap", global average pooling: far fewer dense weights).

The defaults of the levers added since the report (one conv per block, max-pool, flatten head,
one kernel size for every block) build the report's network, so its pinned spec is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnist_hpo.ml.space import Hyper

if TYPE_CHECKING:
    from torch import nn

SUMMARY = "conv blocks (1-3) with pooling, then 0-2 dense layers; samples channels, kernels, widths"
KERNELS = (3, 5, 7)  # odd, so 'same' padding keeps the map size
# "valid" (no padding; train_mnist_fast's 28 -> 24 -> 12 -> 10 -> 5 with 5x5 then 3x3): smaller
# maps, and a 16/32-channel net's training step 20 ms instead of 32 on one core (bf16, batch 256)
PADDINGS = ("same", "valid")
POOLS = ("max", "avg")
HEADS = ("flatten", "gap")


@dataclass(frozen=True)
class Config:
    channels: tuple[int, ...]  # output channels of each conv block; each block halves H and W
    kernel_size: int  # odd, 'same' padding; every block's kernel unless kernel_sizes is given
    fc_widths: tuple[int, ...]  # hidden dense layers after the conv stack
    dropout: float  # before every dense layer (0 = none)
    batch_norm: bool  # BatchNorm2d after each conv's activation input (after the pool)
    kernel_sizes: tuple[int, ...] = ()  # per block, overriding kernel_size (fast nets: 5 then 3)
    pool: str = "max"  # one of POOLS: 2x2, stride 2, at the end of each block
    head: str = "flatten"  # one of HEADS: flatten the maps, or global-average-pool them first
    convs_per_block: int = 1  # conv layers per block, all with the block's channels and kernel
    padding: str = "same"  # one of PADDINGS: 'same' keeps each conv's map size, 'valid' shrinks it

    def kernels(self) -> tuple[int, ...]:
        return self.kernel_sizes or (self.kernel_size,) * len(self.channels)


def sample(hp: Hyper) -> Config:
    # 28 -> 14 -> 7 -> 3: a fourth pool would leave 1x1 maps, so at most 3 blocks.
    n_blocks = hp.int("n_blocks", 1, 3, limits=(1, 3))
    channels = tuple(
        hp.int(f"channels_{i}", 8, 128, log=True, limits=(1, 512)) for i in range(n_blocks)
    )
    # One kernel size for every block (the report's network), or one per block (the fast nets
    # of FRONTIER: 5x5 on the image, 3x3 after the first pool).
    kernels = hp.choice("kernels", ("shared",), allowed=("shared", "per_block"))
    if kernels == "shared":
        kernel_size = hp.choice("kernel_size", (3, 5), allowed=KERNELS)
        per_block: tuple[int, ...] = ()
    else:
        per_block = tuple(
            hp.choice(f"kernel_size_{i}", (3, 5), allowed=KERNELS) for i in range(n_blocks)
        )
        kernel_size = per_block[0]
    convs_per_block = hp.int("convs_per_block", 1, 1, limits=(1, 3))
    padding = hp.choice("padding", ("same",), allowed=PADDINGS)
    pool = hp.choice("pool", ("max",), allowed=POOLS)
    head = hp.choice("head", ("flatten",), allowed=HEADS)
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
        kernel_sizes=per_block,
        pool=pool,
        head=head,
        convs_per_block=convs_per_block,
        padding=padding,
    )


def build(cfg: Config) -> nn.Module:
    from torch import nn  # imported here: see families/__init__.py

    if cfg.pool not in POOLS or cfg.head not in HEADS or cfg.padding not in PADDINGS:
        raise ValueError(
            f"pool must be one of {POOLS}, head one of {HEADS}, padding one of {PADDINGS}: {cfg}"
        )
    kernels = cfg.kernels()
    if len(kernels) != len(cfg.channels) or any(k % 2 == 0 for k in kernels):
        raise ValueError(f"one odd kernel size per block is needed: {cfg}")
    layers: list[nn.Module] = []
    c_in, side = 1, 28
    for block, (c_out, k) in enumerate(zip(cfg.channels, kernels, strict=True), 1):
        pad = k // 2 if cfg.padding == "same" else 0
        side -= cfg.convs_per_block * (k - 1 - 2 * pad)  # each conv: 'valid' loses k - 1
        if side < 2:
            raise ValueError(
                f"with padding 'valid', kernels {kernels} leave no map to pool in block {block}; "
                "use fewer blocks, smaller kernels or padding 'same'"
            )
        for _ in range(cfg.convs_per_block - 1):
            layers.append(nn.Conv2d(c_in, c_out, k, padding=pad))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU())
            c_in = c_out
        layers += [
            nn.Conv2d(c_in, c_out, k, padding=pad),
            nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2),
        ]
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU())
        c_in, side = c_out, side // 2
    if cfg.head == "gap":
        layers.append(nn.AdaptiveAvgPool2d(1))
        side = 1
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
