"""How long the slowest epoch the shipped specs can sample takes, against the stop grace period.

docker-compose.yml gives a stopping worker `stop_grace_period` (default 20 minutes) before
SIGKILL, and deploy/k8s-job.yaml `terminationGracePeriodSeconds` (1200 s); both must exceed one
epoch. The slowest configurations inside the families' default ranges: the largest cnn and
deep_mlp at the smallest batch size (16), on one thread as compose's workers run by default.
Times a few training steps and extrapolates to an epoch of 50,000 images.

    .venv/bin/python benchmarks/slowest_epoch.py [--threads 1] [--steps 30]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from mnist_hpo.families import cnn, deep_mlp
from mnist_hpo.ml.train import prepare

GRACE_S = 1200  # docker-compose.yml's default stop_grace_period and the Job's grace
TRAIN_IMAGES = 50_000  # 60,000 minus the 10,000 validation images
BATCH = 16  # hyperparams.sample_training: batch_size 16..512; small batches are slowest


def seconds_per_step(model: torch.nn.Module, steps: int) -> float:
    model = prepare(model, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):  # warm-up: allocator and kernel selection
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = {
        "cnn 3x128 channels, kernel 5, dense 512x2": cnn.build(
            cnn.Config((128, 128, 128), 5, (512, 512), 0.0, True)
        ),
        "deep_mlp 4x1024": deep_mlp.build(deep_mlp.Config((1024,) * 4, 0.0)),
    }
    for name, model in configs.items():
        epoch = seconds_per_step(model, args.steps) * TRAIN_IMAGES / BATCH
        print(
            f"{name}, batch {BATCH}, {args.threads} thread(s): {epoch / 60:.1f} min per epoch; "
            f"grace {GRACE_S / 60:.0f} min / epoch = {GRACE_S / epoch:.1f}x"
        )


if __name__ == "__main__":
    main()
