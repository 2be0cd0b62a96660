"""The trainer: learns, resumes exactly from a checkpoint, detects divergence. No Optuna here."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mnist_hpo import data
from mnist_hpo import train as train_mod
from mnist_hpo.families import FAMILIES, cnn, perceptron, simple_mlp
from mnist_hpo.train import EpochEnd, TrainConfig, accuracy, pick_precision, prepare, train

CFG = TrainConfig(
    epochs=2,
    batch_size=64,
    optimizer="adam",
    lr=1e-3,
    momentum=0.0,
    weight_decay=0.0,
    loss="cross_entropy",
    schedule="cosine",
    seed=0,
)


@pytest.fixture(scope="module")
def small(raw_mnist: data.RawData) -> data.Data:
    return data.split(raw_mnist, validation_size=1000, train_size=3000)


def _mlp() -> torch.nn.Module:
    return simple_mlp.build(simple_mlp.Config(hidden=64, dropout=0.1))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "mse_sum"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_and_loss_learns(small: data.Data, loss: str, optimizer: str) -> None:
    torch.manual_seed(0)
    lr = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}[optimizer]
    if loss == "mse_sum" and optimizer == "sgd":
        lr /= 64 * 10  # sum over batch and classes; Adam is invariant to the loss's scale
    cfg = dataclasses.replace(CFG, optimizer=optimizer, loss=loss, lr=lr, momentum=0.9)
    model = _mlp()
    seen: list[EpochEnd] = []
    result = train(model, cfg, small, seen.append)
    assert [e.epoch for e in seen] == [1, 2]
    assert result.val_accuracy > 0.80, result  # 3,000 real images, 2 epochs
    assert result.val_history == [e.val_accuracy for e in seen]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_from_checkpoint_matches_an_uninterrupted_run(
    small: data.Data, precision: str
) -> None:
    torch.manual_seed(0)
    straight = _mlp()
    cfg = dataclasses.replace(CFG, epochs=3)
    full = train(straight, cfg, small, precision=precision)
    assert full.val_accuracy > 0.8

    torch.manual_seed(0)
    first = _mlp()
    saved: dict = {}

    def stop_after_one(e: EpochEnd) -> None:
        if e.epoch == 1:
            saved.update(e.state())
            raise KeyboardInterrupt  # the worker dies here

    with pytest.raises(KeyboardInterrupt):
        train(first, cfg, small, stop_after_one, precision=precision)

    resumed_model = _mlp()
    epochs: list[int] = []
    resumed = train(
        resumed_model,
        cfg,
        small,
        lambda e: epochs.append(e.epoch),
        resume=saved,
        precision=precision,
    )
    assert epochs == [2, 3]  # epoch 1 is not trained again
    assert resumed.val_history == full.val_history
    for a, b in zip(
        straight.state_dict().values(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_divergence_stops_training(small: data.Data) -> None:
    cfg = dataclasses.replace(CFG, optimizer="sgd", lr=10.0, loss="mse_sum", epochs=4)
    seen: list[EpochEnd] = []
    result = train(_mlp(), cfg, small, seen.append)
    assert result.diverged and len(seen) < 4


def test_cnn_runs_channels_last_and_evaluates_in_batches(small: data.Data) -> None:
    fam = FAMILIES["cnn"]
    from mnist_hpo.families.cnn import Config

    model = prepare(fam.build(Config((8,), 3, (32,), 0.0, True)), small.device)
    result = train(model, dataclasses.replace(CFG, epochs=1), small)
    assert result.val_accuracy > 0.8
    assert accuracy(model, small.test_x, small.test_y) > 0.8


def test_bf16_trains_in_bfloat16_and_keeps_float32_weights(small: data.Data) -> None:
    torch.manual_seed(0)
    fp32 = _mlp()
    train(fp32, CFG, small)
    torch.manual_seed(0)
    bf16 = _mlp()
    train(bf16, CFG, small, precision="bf16")
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    # Same seed, same batches: only the arithmetic differs, so the weights differ slightly.
    w32, w16 = fp32.state_dict()["1.weight"], bf16.state_dict()["1.weight"]
    assert not torch.equal(w32, w16)
    assert torch.allclose(w32, w16, atol=0.05)
    with pytest.raises(ValueError, match="unknown precision"):
        train(_mlp(), CFG, small, precision="fp16")


def test_auto_precision_picks_bf16_only_where_it_was_measured_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    tiny = perceptron.build(perceptron.Config())  # 7,850 parameters
    mlp = simple_mlp.build(simple_mlp.Config(hidden=128, dropout=0.0))  # 101,770 parameters
    conv = FAMILIES["cnn"].build(cnn.Config((8,), 3, (32,), 0.0, False))
    monkeypatch.setattr(train_mod, "bf16_native", lambda device: True)
    assert pick_precision("auto", mlp, 64, cpu) == "bf16"  # 6.5 M parameter-samples per step
    assert pick_precision("auto", mlp, 32, cpu) == "fp32"  # 3.3 M: the casts cost more
    assert pick_precision("auto", tiny, 256, cpu) == "fp32"  # 2.0 M
    assert pick_precision("auto", tiny, 512, cpu) == "bf16"  # 4.0 M
    assert pick_precision("auto", conv, 16, cpu) == "bf16"
    assert pick_precision("auto", mlp, 512, torch.device("cuda")) == "fp32"  # not measured yet
    assert pick_precision("fp32", mlp, 512, cpu) == "fp32"
    monkeypatch.setattr(train_mod, "bf16_native", lambda device: False)
    assert pick_precision("auto", mlp, 512, cpu) == "fp32"
    assert pick_precision("bf16", tiny, 16, cpu) == "bf16"  # asked for explicitly
    with pytest.raises(ValueError, match="unknown precision"):
        pick_precision("half", mlp, 64, cpu)


def test_on_batch_can_stop_training_mid_epoch(small: data.Data) -> None:
    steps = 0

    class Cut(Exception):
        pass

    def count() -> None:
        nonlocal steps
        steps += 1
        if steps == 5:
            raise Cut

    seen: list[EpochEnd] = []
    with pytest.raises(Cut):
        train(_mlp(), CFG, small, seen.append, on_batch=count)
    assert steps == 5 and seen == []  # 3,000 images / 64 = 47 steps per epoch: stopped in epoch 1
