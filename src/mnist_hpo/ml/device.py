"""Which device a worker trains on, and which precision it trains in there.

The precision policy lives here, beneath the trainer: train.py imports PRECISIONS and
`uses_conv` from this module, never the reverse.
"""

from __future__ import annotations

import torch
from torch import nn

from mnist_hpo.errors import HpoError, UsageError

# Training arithmetic. "bf16" runs the forward pass under bfloat16 autocast (matmuls and convs
# in bfloat16, weights, optimizer state, loss and evaluation in float32); see `bf16_native`.
PRECISIONS = ("fp32", "bf16")
BF16_MIN_WORK = 4_000_000  # parameters x batch size; see pick_precision


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


def bf16_native(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 in hardware, so bf16 autocast is a speed-up.

    CPUs need AVX-512 BF16 or AMX (oneDNN's check); elsewhere autocast emulates bfloat16 and
    runs slower than float32. On the 2-core AMD EPYC (AVX-512 BF16) it halved an MLP step
    (784-128-10, batch 256: 1.29 -> 0.64 ms) and cut a CNN epoch 1.4-2.4x.
    """
    if device.type == "cpu":
        if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
            return False
        try:  # a private oneDNN query; builds without it (some non-x86 wheels) count as no
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return False


def auto_may_use_bf16(device: torch.device) -> bool:
    """Whether `--precision auto` considers bf16 on `device` at all (see pick_precision)."""
    return device.type == "cpu" and bf16_native(device)


def pick_precision(requested: str, model: nn.Module, batch_size: int, device: torch.device) -> str:
    """The precision a trial trains in: `requested` unless it is "auto".

    auto = bf16 where benchmarks/precision.py measured no accuracy cost (tuned defaults, 3 seeds:
    test accuracy -0.02 to +0.03 points) and where it saves time: on a CPU with native bfloat16,
    for convolutional models and for MLPs doing at least BF16_MIN_WORK parameter-samples per step
    (parameters x batch size). Below that autocast's casts cost more than the small matmuls save:
    fp32/bf16 step time on the 2-core AMD EPYC was 0.60-0.94x at 0.25-3.3 M (e.g. 784-16-10 at
    batch 128, 784-128-10 at 32), 1.19-2.55x from 4.0 M up (the perceptron at batch 512); small
    CNNs 0.95-1.7x even at batch 32.
    GPUs stay on fp32 until benchmarks/gpu.py has measured bf16's accuracy there.
    """
    if requested != "auto":
        if requested not in PRECISIONS:
            raise ValueError(f"unknown precision {requested!r}; use auto or one of {PRECISIONS}")
        return requested
    if not auto_may_use_bf16(device):
        return "fp32"
    work = sum(p.numel() for p in model.parameters()) * batch_size
    return "bf16" if uses_conv(model) or work >= BF16_MIN_WORK else "fp32"


def uses_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
