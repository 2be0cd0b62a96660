"""Device and precision checks before any trial starts: one sentence for what cannot work."""

from __future__ import annotations

import pytest
import torch

from mnist_hpo import device
from mnist_hpo.errors import HpoError, UsageError


def test_bf16_is_refused_where_the_hardware_would_emulate_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(device, "bf16_native", lambda device: False)
    with pytest.raises(HpoError, match="no native bfloat16.*use --precision auto or fp32"):
        device.check_precision("bf16", torch.device("cpu"))
    device.check_precision("auto", torch.device("cpu"))  # auto falls back to fp32 by itself
    device.check_precision("fp32", torch.device("cpu"))


def test_devices_this_machine_lacks_are_one_sentence() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(HpoError, match="no CUDA GPU is visible here; use --device cpu"):
        device.resolve_device("cuda")
    with pytest.raises(UsageError, match="is not a device"):
        device.resolve_device("tpu:0")
    assert device.resolve_device("auto") == torch.device("cpu")
