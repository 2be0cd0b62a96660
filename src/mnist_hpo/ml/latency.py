"""Inference time per image, measured the same way on every worker: a study's "latency"."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

# Batch 1 is what a single-image service sees; 256 what a batch job sees. 30 timed runs after
# 5 warm-up ones: the median of 30 batch-1 runs of the report's CNN on one CPU thread varied
# by under 5% between repeats here, where the mean moved with every scheduler hiccup.
BATCHES = (1, 256)
WARMUP = 5
RUNS = 30


@torch.inference_mode()
def ms_per_image(model: nn.Module, images: torch.Tensor, batch: int) -> float:
    """Median wall time per image of `model` on a batch of `batch` images, in milliseconds."""
    was_training = model.training
    model.eval()
    x = images[:batch]
    sync = torch.cuda.synchronize if x.device.type == "cuda" else _no_sync
    times = []
    for i in range(WARMUP + RUNS):
        sync()
        t0 = time.perf_counter()
        model(x)
        sync()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    model.train(was_training)
    return 1000 * statistics.median(times) / len(x)


def _no_sync() -> None:
    """CPU work is done when the call returns."""


def measure(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """`latency_ms` (batch 1) and `latency_ms_batch256` per image."""
    one, many = (ms_per_image(model, images, b) for b in BATCHES)
    return {"latency_ms": one, f"latency_ms_batch{BATCHES[1]}": many}
