"""Which device each of `work --jobs N`'s workers trains on when a host has several GPUs."""

from __future__ import annotations

import re

from mnist_hpo.errors import HpoError, UsageError

_CUDA = re.compile(r"cuda(?::(\d+))?")
_UNCHANGED = ("cpu", "mps")


def assign_devices(jobs: int, device: str, gpu_count: int) -> list[str]:
    """One device per worker for `--device DEVICE` on a host with `gpu_count` visible GPUs.

    `cuda` (and `auto` where a GPU is visible) deals the workers round-robin over the GPUs,
    cuda:0, cuda:1, ...: torch counts only the GPUs in CUDA_VISIBLE_DEVICES, from 0, so these
    indices are always the visible ones. `cuda:K` pins every worker to GPU K. `cpu`, `mps` and
    `auto` without a GPU are passed on unchanged.
    """
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: start at least 1 worker")
    if gpu_count < 0:
        raise ValueError(f"gpu_count {gpu_count} is negative")
    if device in _UNCHANGED or (device == "auto" and gpu_count == 0):
        return [device] * jobs
    match = _CUDA.fullmatch("cuda" if device == "auto" else device)
    if match is None:
        raise UsageError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if gpu_count == 0:
        raise HpoError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    if match.group(1) is None:
        return [f"cuda:{i % gpu_count}" for i in range(jobs)]
    index = int(match.group(1))
    if index >= gpu_count:
        raise HpoError(
            f"--device {device}: only {gpu_count} GPU(s) here; pick cuda:0..cuda:{gpu_count - 1}"
        )
    return [device] * jobs


def visible_gpus() -> int:
    """CUDA GPUs this process may use (after CUDA_VISIBLE_DEVICES); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
