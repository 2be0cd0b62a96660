"""What one training run is told, as plain dataclasses without torch: TrainConfig, Augment and
the names their fields take. Specs are checked against these (ml/hyperparams.py), so reading or
listing specs (`studies`, `status`) never imports torch; train.py and augment.py act on them.
"""

from __future__ import annotations

from dataclasses import dataclass

# "none" trains on the images as they are (today's behaviour); "shift" moves each image by whole
# pixels (a gather: the cheapest); "affine" rotates, zooms, shears and translates by sub-pixel
# amounts (bilinear resampling); "elastic" adds Simard et al.'s smooth random displacement field
# to the affine warp, in the same resampling pass.
AUGMENTS = ("none", "shift", "affine", "elastic")


@dataclass(frozen=True)
class Augment:
    """Magnitudes of each random transform; all zero = no augmentation."""

    shift: int = 0  # whole-pixel translation, uniform in -shift..shift on each axis
    rotate: float = 0.0  # degrees, uniform in -rotate..rotate
    scale: float = 0.0  # zoom factor uniform in 1-scale..1+scale
    shear: float = 0.0  # degrees of horizontal shear, uniform in -shear..shear
    translate: float = 0.0  # sub-pixel translation in pixels, uniform in -translate..translate
    elastic_alpha: float = 0.0  # elastic displacement scale in pixels (Simard: 34); 0 = none
    elastic_sigma: float = 4.0  # pixels, std of the Gaussian smoothing the field (Simard: 4)

    @property
    def warps(self) -> bool:
        """Whether a resampling pass is needed (anything but whole-pixel shifts)."""
        return any(v > 0 for v in (self.rotate, self.scale, self.shear, self.translate)) or (
            self.elastic_alpha > 0
        )

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.warps


NO_AUGMENT = Augment()  # the default: training batches as they are


OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = (
    "cross_entropy",
    "mse",
    "mse_sum",
)  # mse_sum: the course report's MSELoss(reduction="sum")
# Per optimizer step. cosine: lr -> 0 over all steps. onecycle: Smith's one-cycle policy as
# torch's OneCycleLR draws it (cosine up from lr/25 to lr over the `warmup` fraction of steps,
# cosine down to lr/25/1e4), without momentum cycling. warmup_cosine: linear up from ~0 to lr
# over the `warmup` fraction, then cosine to 0. One-cycle was train_mnist_fast's biggest gain
# after dropping the DataLoader (99% in 2 epochs).
SCHEDULES = ("constant", "cosine", "onecycle", "warmup_cosine")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int  # passes over the training split
    batch_size: int
    optimizer: str  # one of OPTIMIZERS; sgd uses `momentum`
    lr: float  # initial learning rate
    momentum: float  # SGD momentum (0 = plain SGD as the course report coded it)
    weight_decay: float  # L2 (sgd, adam) or decoupled (adamw)
    loss: str  # one of LOSSES; mse* regress logits onto one-hot targets, as the report did
    schedule: str  # one of SCHEDULES; cosine decays lr to 0 over `epochs`
    seed: int  # seeds init, dropout, batch order and augmentation
    # The levers below default to the trainer's behaviour before they existed, so a config
    # built without them (the report_* replications, older callers) trains exactly as before.
    warmup: float = 0.0  # onecycle / warmup_cosine: fraction of all steps spent warming up
    label_smoothing: float = 0.0  # target mass spread evenly over all 10 classes (0 = none)
    augment: Augment = NO_AUGMENT  # random transforms of training batches (default: none)
