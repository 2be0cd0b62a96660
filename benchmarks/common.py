"""Shared by the benchmarks: real MNIST split as the workers see it, and the course report's models.

Not a test helper: benchmarks print measured figures and ratios, they never assert on time.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_hpo.families import cnn, deep_mlp, perceptron, simple_mlp
from mnist_hpo.ml import data as data_mod
from mnist_hpo.ml.data import Data

VALIDATION = 10_000  # the shipped specs' validation_size: 50,000 images train


def mnist(device: str = "cpu") -> Data:
    """Full MNIST from MNIST_HPO_DATA (else the cache), split and normalised as a worker does."""
    folder = os.environ.get("MNIST_HPO_DATA")
    raw = data_mod.load("mnist", Path(folder) if folder else None, download=False)
    return data_mod.split(raw, validation_size=VALIDATION, device=device)


def family_models() -> dict[str, nn.Module]:
    """Each family at the course report's configuration (freshly initialised, seed 0)."""
    torch.manual_seed(0)
    return {
        "perceptron": perceptron.build(perceptron.Config()),
        "simple_mlp": simple_mlp.build(simple_mlp.Config(hidden=128, dropout=0.0)),
        "deep_mlp": deep_mlp.build(deep_mlp.Config(widths=(256, 128), dropout=0.0)),
        "cnn": cnn.build(cnn.Config((32, 64), 3, (128,), 0.0, False)),
    }


class ReportCNN(nn.Module):
    """The report's SimpleCNN as it coded it: conv -> ReLU -> pool, default memory format.

    Same function and parameter count as cnn.build(Config((32, 64), 3, (128,), 0, False)), which
    pools before the ReLU and runs channels_last.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    cpu = cpu_model()
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s)"
    )


@dataclass(frozen=True)
class KeptPool:
    """The kept trials of studies, as the ensemble benchmarks read them."""

    storage: Any
    pool: Any  # outputs.ensemble.Pool
    kept: Any  # search.kept.Kept
    data_dir: Path | None

    def val_labels(self) -> Any:
        """The pool's validation labels, its data checked against its fingerprint; the test
        labels that come with them stay unused."""
        from mnist_hpo.outputs import ensemble

        return ensemble.labels(self.pool, self.data_dir, None, False)[0]


def kept_pool(studies: list[str]) -> KeptPool:
    """From MNIST_HPO_STORAGE, MNIST_HPO_ARTIFACTS and (optionally) MNIST_HPO_DATA."""
    from mnist_hpo.outputs import ensemble
    from mnist_hpo.resilience.artifacts import open_store
    from mnist_hpo.resilience.storage import open_storage
    from mnist_hpo.search.kept import Kept

    storage = open_storage(os.environ["MNIST_HPO_STORAGE"], must_exist=True)
    artifacts = os.environ["MNIST_HPO_ARTIFACTS"]
    folder = os.environ.get("MNIST_HPO_DATA")
    return KeptPool(
        storage,
        ensemble.gather(storage, studies),
        Kept(open_store(artifacts), artifacts),
        Path(folder) if folder else None,
    )
