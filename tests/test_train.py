"""The trainer: learns, resumes exactly from a checkpoint, detects divergence. No Optuna here."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from mnist_hpo.families import FAMILIES, simple_mlp
from mnist_hpo.ml import data
from mnist_hpo.ml import train as train_mod
from mnist_hpo.ml.augment import Augment, Augmenter
from mnist_hpo.ml.train import (
    EpochEnd,
    TrainConfig,
    accuracy,
    loss_fn,
    lr_factor,
    prepare,
    train,
)

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


# --- Levers: augmentation, warm-up schedules, label smoothing --------------------------------
AFFINE = Augment(rotate=12.0, scale=0.1, shear=5.0, translate=2.5)
AUGMENTS = {
    "shift": Augment(shift=2),
    "affine": AFFINE,
    "elastic": Augment(rotate=10.0, scale=0.1, translate=2.0, elastic_alpha=34.0),
}


def _interrupted_and_resumed(
    small: data.Data, cfg: TrainConfig, precision: str = "fp32", tamper: bool = False
) -> tuple[torch.nn.Module, list[float], torch.nn.Module, list[float]]:
    """(uninterrupted model, its val history, resumed model, its val history); the resumed run
    died after epoch 1 and restarted from that epoch's checkpoint in a fresh model."""
    torch.manual_seed(0)
    straight = _mlp()
    full = train(straight, cfg, small, precision=precision)
    torch.manual_seed(0)
    saved: dict = {}

    def stop_after_one(e: EpochEnd) -> None:
        if e.epoch == 1:
            saved.update(e.state())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_mlp(), cfg, small, stop_after_one, precision=precision)
    if tamper:  # a checkpoint without the augmentation stream: as if it restarted from seed
        saved["augment_rng"] = torch.Generator().manual_seed(cfg.seed + 99).get_state()
    resumed_model = _mlp()
    resumed = train(resumed_model, cfg, small, resume=saved, precision=precision)
    return straight, full.val_history, resumed_model, resumed.val_history


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(
    ("kind", "precision"),
    [("shift", "fp32"), ("affine", "fp32"), ("elastic", "fp32"), ("affine", "bf16")],
)
def test_resume_with_augmentation_matches_an_uninterrupted_run(
    small: data.Data, kind: str, precision: str
) -> None:
    cfg = dataclasses.replace(
        CFG, epochs=3, augment=AUGMENTS[kind], schedule="onecycle", warmup=0.3, label_smoothing=0.1
    )
    straight, full, resumed_model, resumed = _interrupted_and_resumed(small, cfg, precision)
    assert full[-1] > 0.8
    assert resumed == full
    assert _same_weights(straight, resumed_model)


def test_resume_depends_on_the_augmentation_stream(small: data.Data) -> None:
    # The equality above is not luck: a checkpoint whose augmentation stream is wrong diverges.
    cfg = dataclasses.replace(CFG, epochs=2, augment=AFFINE)
    straight, _, resumed_model, _ = _interrupted_and_resumed(small, cfg, tamper=True)
    assert not _same_weights(straight, resumed_model)


def test_augmentation_changes_training_but_not_batch_order_or_dropout(small: data.Data) -> None:
    one = dataclasses.replace(CFG, epochs=1)
    torch.manual_seed(0)
    plain = _mlp()
    train(plain, one, small)
    torch.manual_seed(0)
    again = _mlp()
    train(again, dataclasses.replace(one, augment=Augment()), small)
    assert _same_weights(plain, again)  # "off" is today's training, bit for bit
    torch.manual_seed(0)
    augmented = _mlp()
    train(augmented, dataclasses.replace(one, augment=AFFINE), small)
    assert not _same_weights(plain, augmented)


@pytest.mark.parametrize("kind", sorted(AUGMENTS))
def test_augmentation_never_touches_validation_or_test_tensors(
    small: data.Data, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.Tensor] = []
    real_call = Augmenter.__call__

    def spy(self: Augmenter, x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        out = real_call(self, x)
        seen.append(out)
        return out

    monkeypatch.setattr(Augmenter, "__call__", spy)
    before = {k: getattr(small, k).clone() for k in ("train_x", "val_x", "test_x")}
    cfg = dataclasses.replace(CFG, epochs=2, augment=AUGMENTS[kind])
    model = _mlp()
    train(model, cfg, small)
    calls = len(seen) // 2
    assert calls == 2 * math.ceil(len(small.train_x) / cfg.batch_size)  # every training batch
    accuracy(model, small.test_x, small.test_y)
    assert len(seen) // 2 == calls  # evaluation never augments
    protected = {
        small.val_x.untyped_storage().data_ptr(),
        small.test_x.untyped_storage().data_ptr(),
    }
    protected.add(small.train_x.untyped_storage().data_ptr())
    for t in seen:
        assert t.untyped_storage().data_ptr() not in protected  # copies of batches only
        assert len(t) <= cfg.batch_size
    for k, v in before.items():
        assert torch.equal(getattr(small, k), v), f"{k} changed"


def test_no_augmenter_exists_when_augmentation_is_off(
    small: data.Data, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an Augmenter was built for a run without augmentation")

    monkeypatch.setattr(train_mod, "Augmenter", refuse)
    seen: list[EpochEnd] = []
    train(_mlp(), dataclasses.replace(CFG, epochs=1), small, seen.append)
    assert seen[0].state()["augment_rng"] is None


@pytest.mark.parametrize("schedule", ["onecycle", "warmup_cosine"])
def test_warmup_schedules_rise_then_fall(small: data.Data, schedule: str) -> None:
    total, warmup = 1000, 0.25
    f = [lr_factor(schedule, s, total, warmup) for s in range(total)]
    peak = f.index(max(f))
    assert abs(peak - warmup * total) <= 1 and math.isclose(max(f), 1.0, abs_tol=1e-3)
    assert all(a <= b for a, b in itertools.pairwise(f[: peak + 1]))  # up
    assert all(a >= b for a, b in itertools.pairwise(f[peak:]))  # then down
    assert f[-1] < 1e-3
    start = 1 / 25 if schedule == "onecycle" else 1 / (warmup * total + 1)
    assert math.isclose(f[0], start, rel_tol=1e-6)
    # The optimizer really follows it: after epoch 1 the lr is lr x factor(steps so far).
    cfg = dataclasses.replace(CFG, epochs=3, schedule=schedule, warmup=0.4)
    steps = math.ceil(len(small.train_x) / cfg.batch_size)
    seen: list[float] = []
    train(
        _mlp(), cfg, small, lambda e: seen.append(e.state()["optimizer"]["param_groups"][0]["lr"])
    )
    expected = [cfg.lr * lr_factor(schedule, k * steps, 3 * steps, 0.4) for k in (1, 2, 3)]
    assert seen == pytest.approx(expected, rel=1e-9)


def test_bad_schedules_are_refused(small: data.Data) -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        train(_mlp(), dataclasses.replace(CFG, schedule="step"), small)
    with pytest.raises(ValueError, match="warmup must be a fraction"):
        train(_mlp(), dataclasses.replace(CFG, schedule="onecycle", warmup=1.0), small)


def test_label_smoothing_spreads_the_target() -> None:
    logits = torch.tensor([[8.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    y = torch.tensor([0, 1])
    plain, smooth = loss_fn(logits, y, "cross_entropy"), loss_fn(logits, y, "cross_entropy", 0.3)
    assert smooth > plain  # a confident, correct answer is now penalised
    logp = torch.log_softmax(logits, 1)
    expected = -(0.7 * logp[[0, 1], [0, 1]] + 0.3 * logp.mean(1)).mean()
    assert torch.isclose(smooth, expected)
    # MSE regresses onto the smoothed one-hot target: 0.9 + 0.1/3 for the label, 0.1/3 else.
    target = torch.tensor([[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]])
    assert torch.isclose(loss_fn(target, torch.tensor([0]), "mse", 0.1), torch.tensor(0.0))
