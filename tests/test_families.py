"""Every family in the registry: forward shapes, FixedTrial rebuild, declared parameters."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from mnist_hpo import data
from mnist_hpo.build import build_trial
from mnist_hpo.families import FAMILIES
from mnist_hpo.hyperparams import sample_training
from mnist_hpo.space import Fixed, Hyper
from mnist_hpo.spec import StudySpec, declared_params
from mnist_hpo.train import pick_precision, train


@pytest.fixture(params=sorted(FAMILIES))
def family_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _sampled_params(name: str, seed: int) -> dict[str, object]:
    """Params of a real (random-sampler) trial of this family."""
    fam = FAMILIES[name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    hp = Hyper(trial)
    fam.sample(hp)
    sample_training(hp, epochs=1, seed=0)
    return dict(trial.params)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_gives_ten_logits(family_name: str, seed: int) -> None:
    fam = FAMILIES[family_name]
    cfg = fam.sample(Hyper(optuna.trial.FixedTrial(_sampled_params(family_name, seed))))
    model = fam.build(cfg)
    out = model(torch.randn(7, 1, 28, 28))
    assert out.shape == (7, 10)
    out.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters())


def test_fixed_trial_rebuilds_the_same_architecture(family_name: str) -> None:
    fam = FAMILIES[family_name]
    params = _sampled_params(family_name, 3)
    study = optuna.create_study()
    study.enqueue_trial(params)
    trial = study.ask()
    live = fam.sample(Hyper(trial))
    rebuilt = fam.sample(Hyper(optuna.trial.FixedTrial(params)))
    assert live == rebuilt
    n_live = sum(p.numel() for p in fam.build(live).parameters())
    assert n_live == sum(p.numel() for p in fam.build(rebuilt).parameters())


def test_declared_params_cover_every_sampled_name(family_name: str) -> None:
    declared = declared_params(FAMILIES[family_name])
    for seed in range(5):
        assert set(_sampled_params(family_name, seed)) <= set(declared)
    assert {"lr", "optimizer", "loss", "batch_size"} <= set(declared)


def test_architectures_match_the_course_report() -> None:
    perceptron = FAMILIES["perceptron"]
    assert sum(p.numel() for p in perceptron.build(perceptron.sample(None)).parameters()) == 7850
    mlp = FAMILIES["simple_mlp"]
    model = mlp.build(mlp.sample(Hyper(optuna.trial.FixedTrial({"hidden": 128, "dropout": 0.0}))))
    # The intended SimpleMLP: ReLU after the hidden layer, not on the input.
    kinds = [type(m).__name__ for m in model]
    assert kinds[:3] == ["Flatten", "Linear", "ReLU"]
    deep = FAMILIES["deep_mlp"]
    cfg = deep.sample(
        Hyper(
            optuna.trial.FixedTrial({"n_layers": 2, "width_0": 256, "width_1": 128, "dropout": 0.0})
        )
    )
    assert cfg.widths == (256, 128)
    assert (
        sum(p.numel() for p in deep.build(cfg).parameters())
        == 784 * 256 + 256 + 256 * 128 + 128 + 1290
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_every_family_trains_one_epoch_on_real_images(
    family_name: str, seed: int, raw_mnist: data.RawData
) -> None:
    # Through build_trial and prepare (channels_last for convolutions), the fused optimizers
    # and, where the CPU has it, bf16 autocast: what a real trial runs.
    small = data.split(raw_mnist, validation_size=500, train_size=2000)
    params = _sampled_params(family_name, seed)
    spec = StudySpec(name="t", family=family_name, epochs=1, n_trials=1)
    built = build_trial(spec, Fixed(params), seed, small.device)
    cfg = dataclasses.replace(built.cfg, lr=1e-3, optimizer="adam", loss="cross_entropy")
    precision = pick_precision("auto", built.model, cfg.batch_size, small.device)
    result = train(built.model, cfg, small, precision=precision)
    assert result.epochs_run == 1 and not result.diverged
    assert result.val_accuracy > 0.5, (params, result)  # 2,000 images, one epoch, Adam 1e-3
