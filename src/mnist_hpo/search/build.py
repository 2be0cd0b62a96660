"""A trial's model and training settings from a spec, its parameters and a seed.

The one place where parameters become a model: the objective calls it with the live Optuna
trial, export-best and predict with `space.Fixed(recorded params)`, so an exported model is
built by exactly the calls, in exactly the order, that the trial made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from mnist_hpo.ml.hyperparams import sample_training
from mnist_hpo.ml.space import Hyper, Pin, TrialLike
from mnist_hpo.ml.train import TrainConfig, prepare
from mnist_hpo.search.seeds import number_seed
from mnist_hpo.search.spec import StudySpec


@dataclass(frozen=True)
class Built:
    arch: Any  # the family's Config
    cfg: TrainConfig
    model: nn.Module  # freshly initialised from the seed, on its device

    @cached_property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def trial_seed(spec: StudySpec, number: int, user_attrs: Mapping[str, Any]) -> int:
    """The seed a trial trains with; a retry inherits its user attrs, seed included."""
    return int(user_attrs.get("seed", number_seed(spec.seed, number)))


def ask_all(
    spec: StudySpec, trial: TrialLike, seed: int = 0, pins: Mapping[str, Any] | None = None
) -> tuple[Any, TrainConfig]:
    """Ask `trial` for every parameter of a trial of this spec: the family's, then training's.
    `pins`: what this trial alone pins, outside the search (spec.OWN_PINS)."""
    hp = Hyper(trial, spec.overrides | {n: Pin(v) for n, v in (pins or {}).items()})
    arch = spec.family_def.sample(hp)
    return arch, sample_training(hp, epochs=spec.epochs, seed=seed)


def build_trial(
    spec: StudySpec,
    trial: TrialLike,
    seed: int,
    device: torch.device,
    pins: Mapping[str, Any] | None = None,
) -> Built:
    """Ask `trial` for the family's and the training parameters, then build the model."""
    arch, cfg = ask_all(spec, trial, seed, pins)
    torch.manual_seed(seed)  # initialisation (and dropout) follow the trial's seed
    model = prepare(spec.family_def.build(arch), device)
    return Built(arch, cfg, model)
