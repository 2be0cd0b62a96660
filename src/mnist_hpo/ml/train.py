"""The training loop: plain PyTorch on in-memory tensors. Never imports Optuna.

`train(model, config, data, on_epoch)` trains for `config.epochs`, evaluating validation
accuracy after each epoch and handing it to `on_epoch`. Pruning, checkpointing and progress all
live in that callback (an exception raised there stops training), so the loop stays a function
of its inputs and can be benchmarked or reused without a study.

Speed notes (2-core CPU, measured on real MNIST; see benchmarks/):
- Batches are gathered from tensors already on the device, in a new order each epoch. The
  course report's DataLoader (batch 5, per-sample collation) made an MLP epoch 11-19x slower
  than these batches of 256-512 (2-core AMD EPYC, benchmarks/trainer_vs_report.py).
- Optimizers use fused kernels on CPU and CUDA.
- Evaluation runs in large batches under inference_mode instead of one image at a time.
- Optional bfloat16 autocast (`precision="bf16"`) on hardware that does bfloat16 natively
  (device.py holds that policy: which precision a trial trains in, and where).
- Augmentation (augment.py) transforms each gathered training batch in one batched pass, in
  float32 before autocast; validation and test images are never augmented.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mnist_hpo.ml.augment import Augmenter
from mnist_hpo.ml.config import LOSSES as LOSSES
from mnist_hpo.ml.config import OPTIMIZERS as OPTIMIZERS
from mnist_hpo.ml.config import SCHEDULES as SCHEDULES
from mnist_hpo.ml.config import TrainConfig as TrainConfig
from mnist_hpo.ml.data import Data
from mnist_hpo.ml.device import PRECISIONS, uses_conv

ONECYCLE_DIV = 25.0  # initial lr = lr / 25 (OneCycleLR's div_factor)
ONECYCLE_FINAL_DIV = 1e4  # final lr = initial lr / 1e4 (OneCycleLR's final_div_factor)
EVAL_BATCH = 5000  # GPU: large enough to amortise per-call overhead, small enough for 2 GB (CNN)
# CPU: activations of a 256-image CNN batch stay in cache; at 5,000 they do not. Evaluating the
# cnn family at the report's shape (conv 32, 64, dense 128) on 10,000 images took 1.4 s in
# batches of 256 against 2.8-4.2 s in batches of 5,000 (1 thread, 2-core CPU); the MLPs took
# the same at either size.
CPU_EVAL_BATCH = 256


@dataclass
class EpochEnd:
    """What `on_epoch` gets after each epoch."""

    epoch: int  # 1-based
    val_accuracy: float  # fraction in [0, 1]
    train_loss: float  # mean loss over the epoch's batches
    seconds: float  # training time of this epoch, evaluation excluded
    diverged: bool  # the loss went non-finite: training stops after this epoch
    state: Callable[[], dict[str, Any]]  # a checkpoint to pass back as `resume=` later


@dataclass
class TrainResult:
    epochs_run: int  # epochs trained in this call (a resumed run trains fewer)
    val_accuracy: float  # after the last epoch
    val_history: list[float] = field(default_factory=list)  # per epoch, including resumed ones
    epoch_seconds: list[float] = field(default_factory=list)
    diverged: bool = False


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(model.parameters())
    # Fused kernels update all parameters in one call instead of ~8 ops per tensor: on the
    # 2-core CPU a batch-16 step of the 784-128-10 MLP with Adam took 0.93 ms fused against
    # 1.16 ms, and deep_mlp 1.48 ms against 2.16 ms. Same update rule; other devices keep the
    # default implementation.
    fused = True if params and params[0].device.type in ("cpu", "cuda") else None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use one of {OPTIMIZERS}")


def loss_fn(
    logits: torch.Tensor, y: torch.Tensor, loss: str, label_smoothing: float = 0.0
) -> torch.Tensor:
    if loss == "cross_entropy":
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if loss in ("mse", "mse_sum"):
        k = logits.shape[1]
        target = F.one_hot(y, num_classes=k).to(logits.dtype)
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / k
        return F.mse_loss(logits, target, reduction="sum" if loss == "mse_sum" else "mean")
    raise ValueError(f"unknown loss {loss!r}; use one of {LOSSES}")


def lr_factor(schedule: str, step: int, total: int, warmup: float) -> float:
    """lr multiplier at optimizer step `step` (0-based) of `total`, for onecycle/warmup_cosine."""
    up = warmup * total
    if schedule == "onecycle":
        start, final = 1 / ONECYCLE_DIV, 1 / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
        if step < up:
            return _cos_between(start, 1.0, step / up)
        return _cos_between(1.0, final, (step - up) / max(1.0, total - up))
    if schedule == "warmup_cosine":
        if step < up:
            return (step + 1) / (up + 1)
        return _cos_between(1.0, 0.0, (step - up) / max(1.0, total - up))
    raise ValueError(f"no lr factor for schedule {schedule!r}")


def _cos_between(a: float, b: float, t: float) -> float:
    """From a (t = 0) to b (t = 1) along half a cosine."""
    return b + (a - b) * (1 + math.cos(math.pi * min(1.0, t))) / 2


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, total: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step lr schedule (None: constant). Its state is part of every checkpoint."""
    if cfg.schedule == "constant":
        return None
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule in ("onecycle", "warmup_cosine"):
        if not 0 <= cfg.warmup < 1:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {cfg.warmup}")
        schedule, warmup = cfg.schedule, cfg.warmup
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(schedule, step, total, warmup)
        )
    raise ValueError(f"unknown schedule {cfg.schedule!r}; use one of {SCHEDULES}")


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to the device; convolutional models go channels_last (faster on CPU and GPU)."""
    model = model.to(device)
    if uses_conv(model):
        # Documented Module.to keyword that torch's type stubs omit.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct argmax predictions, evaluated in large batches."""
    was_training = model.training
    model.eval()
    step = CPU_EVAL_BATCH if x.device.type == "cpu" else EVAL_BATCH
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), step):
        correct += (model(x[i : i + step]).argmax(1) == y[i : i + step]).sum()
    # One host sync for the whole set, not one per batch.
    model.train(was_training)
    return int(correct) / max(1, len(x))


@dataclass
class _Parts:
    """What one train() call trains with, and everything a checkpoint must restore."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler | None
    # A private generator for batch order: the global RNG also feeds init and dropout, and the
    # two must be restorable independently for a resumed run to match an uninterrupted one.
    gen: torch.Generator
    # Augmentation draws from a third generator (on the data's device, so a GPU never waits on
    # a host copy): switching it on changes neither the batch order nor dropout's draws.
    augment: Augmenter | None

    def restore(self, resume: dict[str, Any], result: TrainResult) -> int:
        """Load a checkpoint's states; returns the epoch it was taken after."""
        self.model.load_state_dict(resume["model"])
        self.opt.load_state_dict(resume["optimizer"])
        if self.sched is not None and resume.get("scheduler") is not None:
            self.sched.load_state_dict(resume["scheduler"])
        self.gen.set_state(resume["batch_rng"])
        if self.augment is not None:
            self.augment.set_state(resume["augment_rng"])
        torch.set_rng_state(resume["torch_rng"])
        result.val_history = list(resume["val_history"])
        result.epoch_seconds = list(resume["epoch_seconds"])
        result.val_accuracy = result.val_history[-1] if result.val_history else 0.0
        return int(resume["epoch"])

    def state(self, epoch: int, result: TrainResult) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "batch_rng": self.gen.get_state(),
            "augment_rng": self.augment.get_state() if self.augment is not None else None,
            "torch_rng": torch.get_rng_state(),
            "val_history": list(result.val_history),
            "epoch_seconds": list(result.epoch_seconds),
        }


def train(
    model: nn.Module,
    cfg: TrainConfig,
    data: Data,
    on_epoch: Callable[[EpochEnd], None] | None = None,
    resume: dict[str, Any] | None = None,
    precision: str = "fp32",
    on_batch: Callable[[], None] | None = None,
) -> TrainResult:
    """Train `model` (already on data.device) in place; see the module docstring.

    `on_batch` is called after every optimizer step; an exception raised there stops training
    mid-epoch (a worker whose trial was taken over, or whose stop deadline passed). Calling a
    cheap check costs ~0.2 us, against >= 0.1 ms per step here.
    """
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    opt = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(data.train_x) / cfg.batch_size)
    parts = _Parts(
        model=model,
        opt=opt,
        sched=make_scheduler(opt, cfg, cfg.epochs * steps_per_epoch),
        gen=torch.Generator(device="cpu").manual_seed(cfg.seed),
        augment=Augmenter(cfg.augment, cfg.seed, data.device) if cfg.augment.active else None,
    )
    result = TrainResult(epochs_run=0, val_accuracy=0.0)
    start_epoch = parts.restore(resume, result) if resume is not None else 0
    model.train()
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        mean_loss = _epoch(parts, cfg, data, precision, on_batch) / steps_per_epoch
        diverged = not math.isfinite(mean_loss)
        seconds = time.perf_counter() - t0
        val = accuracy(model, data.val_x, data.val_y)
        result.epochs_run += 1
        result.val_accuracy = val
        result.val_history.append(val)
        result.epoch_seconds.append(seconds)
        result.diverged = diverged

        def state(epoch: int = epoch) -> dict[str, Any]:
            return parts.state(epoch, result)

        if on_epoch is not None:
            on_epoch(EpochEnd(epoch, val, mean_loss, seconds, diverged, state))
        if diverged:
            break
    return result


def _epoch(
    parts: _Parts,
    cfg: TrainConfig,
    data: Data,
    precision: str,
    on_batch: Callable[[], None] | None,
) -> float:
    """One pass over the training split in a new order; the sum of the batches' losses."""
    device = data.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    n = len(data.train_x)
    perm = torch.randperm(n, generator=parts.gen).to(device)
    total = torch.zeros((), device=device)
    for i in range(0, n, cfg.batch_size):
        # index_select per batch: a row memcpy into a fresh batch that is still in cache when
        # the model reads it. Shuffling the whole split with `x[perm]` once per epoch (advanced
        # indexing) took 90-260 ms of a 0.15-0.35 s MLP epoch on one CPU thread, 3,125 batch-16
        # index_selects 19 ms, and it needs no second copy of the images.
        idx = perm[i : i + cfg.batch_size]
        xb, yb = data.train_x.index_select(0, idx), data.train_y.index_select(0, idx)
        if parts.augment is not None:
            xb = parts.augment(xb)  # a new tensor: data.train_x itself is never changed
        with autocast:
            out = parts.model(xb)
        # The loss in float32 (autocast would keep a bf16 MSE's sum in bf16).
        loss = loss_fn(out.float(), yb, cfg.loss, cfg.label_smoothing)
        parts.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        parts.opt.step()
        if parts.sched is not None:
            parts.sched.step()
        total += loss.detach()
        if on_batch is not None:
            on_batch()
    # One host sync per epoch, not per batch: reading the loss each step stalls a GPU.
    return float(total)
