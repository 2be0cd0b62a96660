"""assign_devices: the device of each of `work --jobs N`'s workers, with the GPU count faked."""

from __future__ import annotations

import pytest

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.fleet.gpus import assign_devices, visible_gpus


@pytest.mark.parametrize(
    ("jobs", "device", "gpus", "expected"),
    [
        (5, "cuda", 2, ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]),  # round-robin
        (3, "cuda", 4, ["cuda:0", "cuda:1", "cuda:2"]),
        (2, "cuda", 1, ["cuda:0", "cuda:0"]),  # several workers on one GPU
        (3, "auto", 2, ["cuda:0", "cuda:1", "cuda:0"]),  # auto with GPUs: as cuda
        (3, "cuda:1", 2, ["cuda:1"] * 3),  # pinned
        (2, "auto", 0, ["auto", "auto"]),  # no GPU: the worker decides (CPU)
        (2, "cpu", 4, ["cpu", "cpu"]),  # GPUs present, CPU asked for
        (2, "mps", 0, ["mps", "mps"]),
        (1, "cuda", 8, ["cuda:0"]),
    ],
)
def test_devices_per_worker(jobs: int, device: str, gpus: int, expected: list[str]) -> None:
    assert assign_devices(jobs, device, gpus) == expected


@pytest.mark.parametrize(
    ("device", "gpus", "error", "says"),
    [
        ("cuda", 0, HpoError, "--device cuda: no CUDA GPU is visible here; use --device cpu"),
        ("cuda:0", 0, HpoError, "no CUDA GPU is visible here"),
        ("cuda:2", 2, HpoError, "--device cuda:2: only 2 GPU(s) here; pick cuda:0..cuda:1"),
        ("gpu", 2, UsageError, "--device 'gpu' is not a device; use auto, cpu, cuda or cuda:N"),
        ("cuda:", 2, UsageError, "is not a device"),
        ("cuda:x", 2, UsageError, "is not a device"),
    ],
)
def test_impossible_devices_are_one_clear_error(
    device: str, gpus: int, error: type[HpoError], says: str
) -> None:
    with pytest.raises(error) as caught:
        assign_devices(2, device, gpus)
    assert type(caught.value) is error and says in str(caught.value)


def test_no_workers_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="start at least 1 worker"):
        assign_devices(0, "cuda", 2)


@pytest.mark.parametrize(("available", "count", "expected"), [(False, 0, 0), (True, 3, 3)])
def test_visible_gpus_asks_torch(
    monkeypatch: pytest.MonkeyPatch, available: bool, count: int, expected: int
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert visible_gpus() == expected
