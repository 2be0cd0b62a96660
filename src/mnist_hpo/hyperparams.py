"""The training hyperparameters every family shares: optimizer, learning rate, loss, batch size."""

from __future__ import annotations

from mnist_hpo.space import Hyper
from mnist_hpo.train import LOSSES, OPTIMIZERS, SCHEDULES, TrainConfig


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
    schedule = hp.choice("schedule", SCHEDULES)
    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        loss=loss,
        schedule=schedule,
        seed=seed,
    )
