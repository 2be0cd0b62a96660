"""The training hyperparameters every family shares: optimizer, lr schedule, loss, augmentation."""

from __future__ import annotations

from mnist_hpo.ml.config import AUGMENTS, LOSSES, OPTIMIZERS, SCHEDULES, Augment, TrainConfig
from mnist_hpo.ml.space import Hyper

# Levers added after the course report (schedules with warm-up, label smoothing, augmentation)
# search only their "off" value unless a spec asks for more: a spec that does not name them,
# such as a report_* replication or a study stored before they existed, trains as it always did.
WARMUP_SCHEDULES = ("onecycle", "warmup_cosine")
# What `mnist-hpo families` says of a parameter whose declaration depends on the spec.
SPEC_DEPENDENT = {
    "train_epochs": "int, the spec's epochs (a spec may search 1..epochs, and an [[enqueue]] "
    "block set fewer for its trial alone)",
}


def sample_training(hp: Hyper, *, epochs: int, seed: int) -> TrainConfig:
    """Ask for the shared hyperparameters; the architecture is each family's business."""
    optimizer = hp.choice("optimizer", OPTIMIZERS)
    # SGD wants larger steps than Adam; one log range 1e-4..0.3 covers both without letting
    # TPE waste trials where every optimizer diverges (>1 for SGD with MSE on this data).
    lr = hp.float("lr", 1e-4, 0.3, log=True, limits=(1e-6, 10.0))
    momentum = hp.float("momentum", 0.0, 0.99, limits=(0.0, 0.999)) if optimizer == "sgd" else 0.0
    weight_decay = hp.float("weight_decay", 1e-6, 1e-2, log=True, limits=(0.0, 1.0))
    # The report compared MSE on one-hot targets with cross-entropy; "mse_sum" (its exact
    # reduction) is allowed for replication but not searched: with sum, lr scales with batch.
    loss = hp.choice("loss", ("cross_entropy", "mse"), allowed=LOSSES)
    batch_size = hp.int("batch_size", 16, 512, log=True, limits=(1, 60000))
    schedule = hp.choice("schedule", ("constant", "cosine"), allowed=SCHEDULES)
    # onecycle's usual warm-up is 25-30% of the steps (OneCycleLR: 0.3), a warm-up + cosine's
    # 5-10%; one range covers both.
    warmup = (
        hp.float("warmup", 0.05, 0.4, limits=(0.0, 0.9)) if schedule in WARMUP_SCHEDULES else 0.0
    )
    # Usually 0.1 for image classifiers; up to 0.5 may be set, more hides the labels.
    label_smoothing = hp.float("label_smoothing", 0.0, 0.0, limits=(0.0, 0.5))
    # How long this trial trains (its schedule spans them): the study's epochs unless a spec
    # searches fewer or an [[enqueue]] block pins fewer (spec.OWN_PINS). The cnn spec's fast
    # net, trained 2 epochs of one-cycle, is a completed 99% trial 9-13 s into the study;
    # trained 24, it first reached 99% at epoch 4, after 27 s.
    train_epochs = hp.int("train_epochs", epochs, epochs, limits=(1, epochs))
    return TrainConfig(
        epochs=train_epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        loss=loss,
        schedule=schedule,
        seed=seed,
        warmup=warmup,
        label_smoothing=label_smoothing,
        augment=sample_augment(hp),
    )


def sample_augment(hp: Hyper) -> Augment:
    """The augmentation of training batches (augment.py); each kind asks only for its own knobs.

    Default ranges are what helps on MNIST (FRONTIER anchors: translation 2-3 px, rotation
    10-15 degrees, zoom 10%, shear; elastic alpha 34, sigma 4 as Simard et al.), searched only
    once a spec allows the kind (e.g. augment = ["none", "affine"]).
    """
    kind = hp.choice("augment", ("none",), allowed=AUGMENTS)
    if kind == "none":
        return Augment()
    if kind == "shift":
        # Digits sit in a 20x20 box centred in 28x28: shifts of 3 px or less keep them whole.
        return Augment(shift=hp.int("shift", 1, 3, limits=(1, 6)))
    rotate = hp.float("rotate", 0.0, 15.0, limits=(0.0, 45.0))
    scale = hp.float("scale", 0.0, 0.15, limits=(0.0, 0.5))
    shear = hp.float("shear", 0.0, 15.0, limits=(0.0, 45.0))
    translate = hp.float("translate", 0.0, 3.0, limits=(0.0, 6.0))
    if kind == "affine":
        return Augment(rotate=rotate, scale=scale, shear=shear, translate=translate)
    return Augment(
        rotate=rotate,
        scale=scale,
        shear=shear,
        translate=translate,
        elastic_alpha=hp.float("elastic_alpha", 10.0, 40.0, limits=(0.0, 100.0)),
        elastic_sigma=hp.float("elastic_sigma", 3.0, 6.0, limits=(1.0, 10.0)),
    )
