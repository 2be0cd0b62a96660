"""Which device a worker trains on, and which precision it may use there."""

from __future__ import annotations

import torch

from mnist_hpo.errors import HpoError, UsageError
from mnist_hpo.train import PRECISIONS, auto_may_use_bf16, bf16_native


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:N` or `mps`, checked against what this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HpoError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HpoError(
                f"--device {name}: only {torch.cuda.device_count()} GPU(s) here; pick cuda:0.."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise HpoError(f"--device {name}: Apple MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def check_precision(name: str, device: torch.device) -> None:
    """Refuse a precision this device cannot use well, before any trial starts."""
    if name not in ("auto", *PRECISIONS):
        raise UsageError(f"--precision {name!r} is not a precision; use auto, fp32 or bf16")
    if name == "bf16" and not bf16_native(device):
        raise HpoError(
            f"--precision bf16: {device} has no native bfloat16 (a CPU needs AVX-512 BF16 or "
            "AMX, a GPU compute capability 8.0+), so it would train slower than fp32; use "
            "--precision auto or fp32"
        )


def describe_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if auto_may_use_bf16(device):
        return "auto (this CPU does bfloat16 natively: bf16 for CNNs and larger MLP steps)"
    return "auto (fp32 on this device)"
